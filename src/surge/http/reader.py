"""Reading requests off one connection: httptools (llhttp) parsing, and every bound on a
request while it arrives (docs/security.md).

What a request may be: a request line and header block of at most `max_header` bytes
(trailer fields included, and counted even while httptools still holds an unfinished
field), a body of at most `max_body` bytes (refused at once when Content-Length says so),
a header block complete `header_timeout` after its first byte and a body arriving at
`body_min_rate` after a grace. What it may not do: carry a single-valued field twice,
let a trailer field change its headers, or omit Host in HTTP/1.1.

The reader hands each complete request to its connection (`Connection.received`); a
request it refuses comes out of `feed` as `Refused`, which the connection answers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

import httptools

from surge.ground.web import Request

if TYPE_CHECKING:
    from surge.http.state import ServerState

# Chunked framing around a body (sizes, CRLFs, extensions) may add this many times the
# body's own bytes before a message counts as oversized.
FRAMING_ALLOWANCE = 8

# An incoming X-Request-ID is kept if it is short and plain; otherwise we make one.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Fields a request may carry once: two values would leave "which one counts" to whoever
# reads them, and a proxy in front may have checked or set the other one. Any other field
# sent twice is combined into one value (RFC 9110 5.3).
_SINGLE = frozenset(
    (
        b"host",
        b"authorization",
        b"content-type",
        b"content-length",
        b"idempotency-key",
        b"x-request-id",
        b"origin",
        b"upgrade",
        b"expect",
        b"sec-websocket-key",
        b"sec-websocket-version",
    )
)


class Connection(Protocol):
    """What the reader needs of its connection (surge.http.server.HttpProtocol)."""

    client: str

    def received(self, request: Request) -> None:
        """A complete request (may raise Overflow: the connection takes no more)."""

    def continue_body(self) -> None:
        """The client waits for `100 Continue` before sending the body."""


class Refused(Exception):
    """A request the reader refuses: the connection answers with this and ends."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


class Overflow(Exception):
    """Raised by `Connection.received`: no more requests on this connection."""


class RequestReader:
    __slots__ = (
        "_body",
        "_body_size",
        "_chunk_read",
        "_conn",
        "_fresh",
        "_head_done",
        "_header_bytes",
        "_headers",
        "_in_head",
        "_last_chunk",
        "_max_body",
        "_max_header",
        "_raw",
        "_reads",
        "_repeated",
        "_state",
        "_url",
        "parser",
        "started",
    )

    def __init__(self, state: ServerState, conn: Connection) -> None:
        self._state = state
        self._conn = conn
        self._max_header = state.limits.max_header  # (read per field: kept at hand)
        self._max_body = state.limits.max_body
        self.parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        # fields sent more than once, joined when the head ends: joining as they come
        # copied the value each time, quadratic in the number of repeats
        self._repeated: dict[bytes, list[bytes]] | None = None
        self._header_bytes = 0  # request line + fields (+ trailers) of the current request
        self._body: list[bytes] | None = None
        self._body_size = 0
        self.started = 0.0  # first byte of the request being read; 0: between requests
        self._in_head = False  # reading its request line and header fields
        self._head_done = 0.0  # when its header block ended
        self._raw = 0  # bytes read for it after the read it began in (see _bound)
        self._fresh = False  # it began in the read being parsed
        self._last_chunk = -1  # raw bytes since a chunk header with no data (trailers?)
        self._reads = 0  # reads fed so far
        self._chunk_read = 0  # the read that brought the last chunk header

    def feed(self, data: bytes) -> None:
        """Parses `data`; complete requests go to the connection as they are read.
        Raises Refused (answer it, end the connection), Overflow (from the connection),
        or httptools.HttpParserUpgrade (the request before it asked to switch)."""
        self._fresh = False
        self._reads += 1
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise
        except httptools.HttpParserError as exc:
            # httptools wraps what our callbacks raise in its own error
            cause = exc.__context__
            if isinstance(cause, Refused | Overflow):
                raise cause from None
            if "Duplicate Content-Length" in str(exc):  # llhttp's own check, before ours
                raise Refused(400, "duplicate-header", "content-length may be sent once") from None
            raise Refused(400, "bad-request", "malformed HTTP request") from None
        if self.started:
            self._bound(len(data))

    def _bound(self, size: int) -> None:
        """Bounds what the parser buffers for an unfinished request. httptools keeps a
        header field until its line ends and reports it only then, so a field of endless
        length would grow unseen: every read after the one the request began in counts
        in full (that first read is bounded by the transport's read size)."""
        if self._fresh:
            return
        self._raw += size
        limits = self._state.limits
        if self._in_head:
            if self._raw > limits.max_header:
                raise Refused(431, "headers-too-large", "request headers too large")
            return
        if self._last_chunk >= 0 and self._chunk_read < self._reads:
            # a whole read with no chunk data since a chunk header: trailer fields (the
            # read that brought the header may also hold the chunk before it)
            self._last_chunk += size
            if self._last_chunk + self._header_bytes > limits.max_header:
                raise Refused(431, "headers-too-large", "request trailers too large")
        if self._raw > limits.max_header + FRAMING_ALLOWANCE * limits.max_body:
            raise Refused(413, "body-too-large", f"body exceeds {limits.max_body} bytes")

    def overdue(self, now: float, slack: float) -> bool:
        """The request being read has missed its deadline (header block, then body)."""
        limits = self._state.limits
        if self._in_head:
            deadline = self.started + limits.header_timeout
        else:
            grace = self._head_done + limits.header_timeout
            deadline = grace + self._body_size / limits.body_min_rate
        return now > deadline + slack

    def stop(self) -> None:
        """The connection refused what it was reading: nothing is in progress."""
        self.started = 0.0

    def close(self) -> None:
        """The connection is gone: let go of the parser (with whatever it buffered) and of
        the connection. Parser, reader and connection refer to each other; left to the
        cyclic collector, which runs rarely here (lifecycle.tune_gc), a closed
        connection's buffers outlived it (1.5 GB after 12,500 unfinished heads)."""
        self.started = 0.0
        self._headers = {}
        self._body = None
        self._url = b""
        self.parser = None  # type: ignore[assignment]  # never fed again
        self._conn = None  # type: ignore[assignment]

    # -- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._repeated = None
        self._header_bytes = 0
        self._body = None
        self._body_size = 0
        self.started = self._state.now
        self._in_head = True
        self._fresh = True
        self._raw = 0
        self._last_chunk = -1

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._max_header:
            raise Refused(414, "uri-too-long", "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._header_bytes + len(name) + len(value) + 4
        self._header_bytes = size
        if size > self._max_header:
            raise Refused(431, "headers-too-large", "request headers too large")
        if not self._in_head:
            return  # a trailer field: never merged into the request's header fields
        name = name.lower()
        headers = self._headers
        if name not in headers:
            headers[name] = value
        elif name in _SINGLE:
            raise Refused(400, "duplicate-header", f"{name.decode()} may be sent once")
        else:
            repeated = self._repeated
            if repeated is None:
                repeated = self._repeated = {}
            values = repeated.get(name)
            if values is None:
                repeated[name] = [headers[name], value]
            else:
                values.append(value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_done = self._state.now
        headers = self._headers
        if self._repeated is not None:
            for name, values in self._repeated.items():
                headers[name] = b", ".join(values)
            self._repeated = None
        # the common request (a GET with a Host and no body) passes four lookups
        if (
            b"host" in headers
            and b"content-length" not in headers
            and b"transfer-encoding" not in headers
            and b"expect" not in headers
        ):
            return
        self._check_head(headers)

    def _check_head(self, headers: dict[bytes, bytes]) -> None:
        version = self.parser.get_http_version()
        if b"host" not in headers and version != "1.0":
            raise Refused(400, "bad-request", "an HTTP/1.1 request needs a Host field")
        coding = headers.get(b"transfer-encoding")
        if coding is not None:
            if version == "1.0":
                # RFC 9112 6.1: HTTP/1.0 has no chunked framing; a server must close after
                # such a request, and a proxy in front may have read it otherwise
                raise Refused(400, "bad-request", "Transfer-Encoding in an HTTP/1.0 request")
            if coding.strip().lower() != b"chunked":
                # a coding we do not know (its body would reach the handler still encoded):
                # RFC 9112 says 501 SHOULD; bad input gets a 4xx here, as every refusal
                raise Refused(400, "bad-request", "only Transfer-Encoding: chunked is known")
        length = headers.get(b"content-length")
        if length is not None and int(length) > self._max_body:
            raise Refused(413, "body-too-large", f"body exceeds {self._max_body} bytes")
        if (length not in (None, b"0") or b"transfer-encoding" in headers) and (
            b"upgrade" in headers and self.parser.should_upgrade()
        ):
            # llhttp hands over the bytes after the head as the new protocol's: a body
            # would be read as WebSocket frames, or lost to the handler
            raise Refused(400, "bad-request", "a request asking to upgrade may not carry a body")
        expect = headers.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                raise Refused(417, "expectation-failed", "only Expect: 100-continue is known")
            if version != "1.0":  # RFC 9110 10.1.1: ignored in 1.0
                self._conn.continue_body()

    def on_chunk_header(self) -> None:
        # The last chunk (size 0) is followed by trailer fields, which httptools reports
        # only once each line ends: until data follows this header, `_bound` counts the
        # bytes read against the header limit (a chunk with data resets it in on_body).
        self._last_chunk = 0
        self._chunk_read = self._reads

    def on_body(self, body: bytes) -> None:
        self._last_chunk = -1
        size = self._body_size + len(body)
        if size > self._max_body:
            raise Refused(413, "body-too-large", f"body exceeds {self._max_body} bytes")
        self._body_size = size
        if self._body is None:
            self._body = [body]
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        url = self._url
        self._url = b""
        self.started = 0.0
        path_bytes, _, query = url.partition(b"?")
        headers = self._headers
        rid = headers.get(b"x-request-id")
        if rid is None or not _REQUEST_ID.fullmatch(rid):
            rid = self._state.new_request_id()
        request = Request(
            parser.get_method().decode("latin-1"),
            path_bytes.decode("latin-1"),  # raw: routes match it undecoded (Router.match)
            query.decode("latin-1"),
            headers,
            b"".join(self._body) if self._body else b"",
            self._conn.client,
            rid,
        )
        if b"upgrade" in headers or request.method == "CONNECT":  # llhttp: both switch
            request.upgrade = parser.should_upgrade()
        if not parser.should_keep_alive():
            request.keep_alive = False
        self._conn.received(request)
