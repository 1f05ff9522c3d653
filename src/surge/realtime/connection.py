"""One WebSocket client, after the upgrade: reads its frames, applies its limits, and is
written to by the hub.

Incoming frames are parsed by wsproto (sans-I/O, RFC 6455: masking, fragmentation,
control frames, the close handshake); outgoing messages are frames the hub encoded once
for all subscribers (frames.py). Nothing here awaits: an op that needs Redis runs in a
task of the hub's, so a slow Redis never stops this connection's reading.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from surge.ground.buckets import Bucket
from surge.ground.sockets import reset
from surge.realtime import frames, wire

if TYPE_CHECKING:
    from surge.realtime.hub import Hub

log = logging.getLogger("surge.realtime")

# Close codes (docs/realtime.md)
GOING_AWAY = 1001  # shutdown: reconnect elsewhere
TOO_BIG = 1009  # a message over the size limit
TOO_SLOW = 4008  # the client did not read fast enough: its outgoing buffer overflowed
EXPIRED = 4001  # the connection's token expired: reconnect with a fresh one
POLICY = 1008  # the client broke a rule of ours (too many pings)
# Pings a client may send a second, and in a burst. Each is answered (the last of a read
# only: RFC 6455 5.5.3 allows it), so without a bound a ping flood makes us write as
# fast as the client sends.
PING_RATE = 10.0
PING_BURST = 20.0
# Frames (messages, their fragments, pings, pongs) a client may send a second, and in a burst.
# Each costs the loop a few microseconds; one read can carry 40,000 tiny frames, so
# without a bound one client could hold the loop for a fraction of a second per read.
FRAME_RATE = 200.0
PIECE_COST = 64  # bytes a kept fragment of an unfinished message is charged beyond its own
FRAME_BURST = 400.0
ABORT_AFTER = 5.0  # seconds a closing client gets to read its backlog and the close frame


class WsConnection(asyncio.Protocol):
    __slots__ = (
        "_abort",
        "_frames",
        "_hub",
        "_partial",
        "_partial_size",
        "_pings",
        "_publishes",
        "_ws",
        "admin",
        "closing",
        "expires",
        "fd",
        "last_seen",
        "rooms",
        "transport",
        "user",
    )

    def __init__(
        self, hub: Hub, user: str | None, admin: bool = False, expires: float = math.inf
    ) -> None:
        self._hub = hub
        self.user = user  # None: anonymous (may only subscribe)
        self.admin = admin  # may subscribe to any user's room
        # its token's exp (and leeway), epoch seconds: past it the connection is closed
        # (EXPIRED): what the token granted (a user's room, publishing) ends with it
        self.expires = expires
        self.rooms: set[str] = set()
        self.transport: asyncio.Transport | None = None
        self._ws = Connection(ConnectionType.SERVER)
        self._partial: list[str] | None = None
        self._partial_size = 0
        now = time.monotonic()
        rate = hub.limits.publish_rate
        self._publishes = Bucket(rate, rate, now)  # publishes and resumes
        self._pings = Bucket(PING_RATE, PING_BURST, now)
        self._frames = Bucket(FRAME_RATE, FRAME_BURST, now)  # data frames
        self.last_seen = time.monotonic()
        self.closing = False
        self._abort: asyncio.TimerHandle | None = None

    # -- transport callbacks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.fd: int = transport.get_extra_info("socket").fileno()  # for the fan-out's writes
        self._hub.joined(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._hub.left(self)
        if self._abort is not None:
            self._abort.cancel()

    def pause_writing(self) -> None:
        # The client reads slower than it is answered: stop reading its requests until
        # it catches up (its own replies are bounded like room messages, see `_write`).
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            # we said goodbye (and sent FIN): what the client sends now is dropped unread,
            # its close frame included; its FIN, or ABORT_AFTER, ends the connection
            return
        self.last_seen = self._hub.now
        ws = self._ws
        ws.receive_data(data)
        ping: Ping | None = None
        for event in ws.events():  # frames are parsed as they are asked for
            if isinstance(event, CloseConnection):
                self._closed_by_peer(event)
                return
            if not self._frames.take(self._hub.now):  # every frame counts, pongs too
                self.close(POLICY, f"at most {FRAME_RATE:g} frames a second")
            elif isinstance(event, TextMessage | BytesMessage):
                if isinstance(event, TextMessage):
                    self._text(event.data, event.message_finished)
                else:
                    self._binary(len(event.data), event.message_finished)
            elif isinstance(event, Ping):
                if self._pings.take(self._hub.now):
                    ping = event  # answered once the read is done: the last one only
                else:
                    self.close(POLICY, f"at most {PING_RATE:g} pings a second")
            if self.transport is None or self.closing:
                return  # the rest of the read is never parsed
        if ping is not None:
            self._write(ws.send(ping.response()))

    def eof_received(self) -> bool | None:
        return False  # the peer half-closed: close our side too

    # -- incoming messages ----------------------------------------------------------------------
    def _text(self, text: str, finished: bool) -> None:
        limit = self._hub.limits.max_message
        # characters (a lower bound of the bytes), and each piece kept counts what a
        # string costs besides them: empty fragments are not free
        size = self._partial_size + len(text) + (0 if finished else PIECE_COST)
        if size > limit:
            self.close(TOO_BIG, f"messages are limited to {limit} bytes")
            return
        if not finished:
            if self._partial is None:
                self._partial = []
            self._partial.append(text)
            self._partial_size = size
            return
        if self._partial is not None:
            self._partial.append(text)
            text = "".join(self._partial)
            self._partial, self._partial_size = None, 0
        if len(text.encode()) > limit:
            self.close(TOO_BIG, f"messages are limited to {limit} bytes")
            return
        self._hub.stats["messages_in"] += 1
        try:
            op = wire.parse(text)
            self._hub.handle(self, op)
        except wire.WireError as refused:
            self._hub.stats["errors"] += 1
            self.reply(wire.error(refused.request_id, refused.code, refused.message))

    def _binary(self, size: int, finished: bool) -> None:
        """Binary messages mean nothing here: refused once whole, and bounded like text
        meanwhile (else a client could stream one without end)."""
        self._partial_size += size
        if self._partial_size > self._hub.limits.max_message:
            self.close(TOO_BIG, f"messages are limited to {self._hub.limits.max_message} bytes")
        elif finished:
            self._partial_size = 0
            self.reply(wire.error(None, "bad-frame", "send JSON in text frames"))

    def allow_publish(self) -> bool:
        """The connection's publish bucket: `publish_rate` a second, as many in a burst."""
        return self._publishes.take(time.monotonic())

    def _closed_by_peer(self, event: CloseConnection) -> None:
        try:
            answer = self._ws.send(event.response())
        except LocalProtocolError:  # we had sent our close first: the handshake is done
            answer = b""
        transport = self.transport
        if transport is not None and not self.closing:
            transport.write(answer)
        self.closing = True  # nothing may follow the close frame (RFC 6455 5.5.1)
        self._hub.forget(self)
        if transport is not None:
            transport.close()

    # -- outgoing ---------------------------------------------------------------------------------
    def reply(self, payload: bytes) -> None:
        """A frame for this client alone (ack, error, a resumed message)."""
        self._write(frames.text(payload))

    def send(self, frame: bytes) -> None:
        """A frame built already (a room message), for this client alone."""
        self._write(frame)

    def _write(self, data: bytes) -> None:
        """Every write to this client but the fan-out's: bounded like it (else a client
        that never reads could have its acks, errors and resumed history pile up)."""
        transport = self.transport
        if transport is None or self.closing:
            return
        if transport.get_write_buffer_size() > self._hub.limits.send_buffer:
            self._hub.stats["dropped_slow"] += 1
            self.close(TOO_SLOW, "too slow: outgoing buffer full")
            return
        transport.write(data)

    def close(self, code: int, reason: str) -> None:
        """Sends a close frame after whatever is queued, stops sending anything else, and
        drops the connection if the client has not read up to it within ABORT_AFTER."""
        transport = self.transport
        if transport is None or self.closing:
            return
        self.closing = True
        self._hub.forget(self)
        if self._ws.state is ConnectionState.OPEN:
            transport.write(self._ws.send(CloseConnection(code=code, reason=reason)))
        # A lingering close: our side ends once the buffer is out (FIN), but we go on
        # reading until the client answers with its close frame or its own FIN. Closing
        # outright while the client still sends would make the kernel reset the connection
        # and throw away what was queued for it, close frame included.
        if transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()
        else:
            transport.close()
        self._abort = asyncio.get_running_loop().call_later(ABORT_AFTER, self.abort)

    def abort(self) -> None:
        """Cuts the connection with a reset: the kernel drops what is queued for it (a
        client that stopped reading would otherwise keep it there: surge.http.server)."""
        if self.transport is not None:
            reset(self.transport)
