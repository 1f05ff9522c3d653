"""What grpc's own bounds leave open, closed before a call reaches a service.

grpc counts a call against `maximum_concurrent_rpcs` from its HEADERS frame on, and waits
for its request message without a bound: a client that opens streams and never sends
their message held every slot of a process for as long as it liked (the outsider's attack,
docs/security.md). So each method is served as a streaming-request one here, which lets
the wait for the (first) request message be bounded: past `message_timeout` the call is
refused and its slot freed, as HTTP answers 408 a request whose body does not come.

Calls that last (server streams: WatchSale, health's Watch; reflection's bidirectional
stream) may hold at most `max_streams` slots of the process together, so the unary calls
(a purchase) always have the rest.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from surge.rpc import convert

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class CallGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio: untyped
    def __init__(self, message_timeout: float, max_streams: int) -> None:
        self._timeout = message_timeout
        self._max_streams = max_streams
        self.streams = 0  # long calls in progress in this process

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return None
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            behavior = self._server_stream(handler.unary_stream)
        elif handler.stream_stream is not None:
            behavior = self._both_streams(handler.stream_stream)
        else:  # no stream-unary method is served: nothing to guard
            return handler
        return grpc.stream_stream_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _first(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        """The call's request message, if it comes within the timeout."""
        try:
            return await asyncio.wait_for(anext(aiter(requests)), self._timeout)
        except TimeoutError:
            refused = convert.refusal_of(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "request-timeout",
                f"the request message did not arrive within {self._timeout:g} s",
                408,
            )
        except StopAsyncIteration:
            refused = convert.refusal_of(
                grpc.StatusCode.INVALID_ARGUMENT, "no-message", "the call carried no message", 400
            )
        except DecodeError:  # grpc would answer UNKNOWN naming the exception, and log it
            refused = convert.refusal_of(
                grpc.StatusCode.INVALID_ARGUMENT,
                "malformed-message",
                "the request message is not the method's protobuf message",
                400,
            )
        await context.abort(refused.code, refused.detail, trailing_metadata=refused.trailers)

    async def _enter(self, context: grpc.aio.ServicerContext) -> None:
        if self.streams >= self._max_streams:
            refused = convert.refusal_of(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too-many-streams",
                "too many streams in progress: try again later",
                503,
                "1",
            )
            await context.abort(refused.code, refused.detail, trailing_metadata=refused.trailers)
        self.streams += 1

    def _unary(self, serve: Callable[..., Any]) -> Callable[..., Any]:
        async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await serve(await self._first(requests, context), context)

        return behavior

    def _server_stream(self, serve: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(serve):

            async def replies(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                await self._enter(context)
                try:
                    request = await self._first(requests, context)
                    async for reply in serve(request, context):
                        yield reply
                finally:
                    self.streams -= 1

            return replies

        async def writes(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            await self._enter(context)  # a servicer that writes with context.write
            try:
                await serve(await self._first(requests, context), context)
            finally:
                self.streams -= 1

        return writes

    def _both_streams(self, serve: Callable[..., Any]) -> Callable[..., Any]:
        async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            await self._enter(context)
            try:
                rest = aiter(requests)
                first = await self._first(rest, context)

                async def again() -> AsyncIterator[Any]:
                    yield first
                    async for request in rest:
                        yield request

                result = serve(again(), context)
                if inspect.isasyncgen(result):
                    async for reply in result:
                        await context.write(reply)
                else:
                    await result
            finally:
                self.streams -= 1

        return behavior
