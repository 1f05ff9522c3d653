"""A tiny raw HTTP/1.1 load client for tests: many connections, requests fired at once."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")
_LENGTH = re.compile(rb"content-length: (\d+)", re.IGNORECASE)


@dataclass
class Tally:
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


def _request(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    match = _STATUS.match(head)
    if match is None:
        raise ValueError(f"not an HTTP response: {head[:60]!r}")
    length = _LENGTH.search(head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    return int(match.group(1)), head, body


async def burst(host: str, port: int, path: str, headers: dict[str, str], n: int) -> Tally:
    """Opens n connections, then sends one request on each at the same moment."""
    tally = Tally()
    conns = await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(n)))
    payload = _request(path, headers)
    for _, writer in conns:
        writer.write(payload)

    async def collect(reader: asyncio.StreamReader) -> None:
        try:
            status, _, _ = await read_response(reader)
            tally.add(status)
        except Exception as exc:
            tally.errors.append(repr(exc))

    await asyncio.gather(*(collect(reader) for reader, _ in conns))
    for _, writer in conns:
        writer.close()
    return tally


@dataclass
class Hammer:
    """Closed-loop clients that keep going until told to stop or refused.

    A request that was written and then got no complete answer is a failure; a connection
    the server refused (listener closed) only ends that client.
    """

    sent: int = 0
    answered: Tally = field(default_factory=Tally)
    failures: list[str] = field(default_factory=list)
    refused: int = 0
    closes: int = 0
    # Like a load balancer that took the server out of rotation: no new connections once
    # this Event is set (requests on open connections go on).
    no_new_connections: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(
        self, host: str, port: int, path: str, headers: dict[str, str], stop: asyncio.Event
    ) -> None:
        payload = _request(path, headers)
        while not stop.is_set() and not self.no_new_connections.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                self.refused += 1
                return
            try:
                while not stop.is_set():
                    writer.write(payload)
                    self.sent += 1
                    try:
                        status, head, _ = await read_response(reader)
                    except Exception as exc:
                        self.failures.append(f"{path}: {exc!r}")
                        return
                    self.answered.add(status)
                    if b"connection: close" in head.lower():
                        self.closes += 1
                        break
            finally:
                writer.close()


async def hammer(
    host: str,
    port: int,
    targets: list[tuple[str, dict[str, str]]],
    clients: int,
    stop: asyncio.Event,
    result: Hammer | None = None,
) -> Hammer:
    result = result or Hammer()
    await asyncio.gather(
        *(result.client(host, port, *targets[i % len(targets)], stop) for i in range(clients))
    )
    return result


@dataclass(frozen=True)
class Attempt:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""

    def encode(self) -> bytes:
        lines = [
            f"{self.method} {self.path} HTTP/1.1",
            "Host: test",
            f"Content-Length: {len(self.body)}",
        ]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


async def storm(
    host: str, port: int, attempts: list[Attempt], connections: int
) -> list[tuple[int, bytes]]:
    """Sends every attempt over `connections` keep-alive connections at once; returns
    (status, body) per attempt, in order (status 0: no answer, body says why)."""
    results: list[tuple[int, bytes]] = [(0, b"not sent")] * len(attempts)
    cursor = iter(range(len(attempts)))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for index in cursor:
                writer.write(attempts[index].encode())
                try:
                    status, head, body = await read_response(reader)
                except Exception as exc:
                    results[index] = (0, repr(exc).encode())
                    return
                results[index] = (status, body)
                if b"connection: close" in head.lower():
                    return
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return results
