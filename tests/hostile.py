"""The hostile-client harness (issue 12): raw sockets that misbehave on purpose, a probe
that stands for everybody else, and the server's memory and CPU as the kernel sees them.

- `Conn`: a raw client connection with a read buffer: send bytes (`send`, or `send_some`
  for as much as the kernel takes in a given time), read the next answer within a
  timeout, read until the server ends the connection (FIN or reset) and how long that
  took (`until_end`, `time_to_end`); `parse_answer(s)` for HTTP/1.1 answers on the wire.
- `tcp_state`/`wait_cut`: whether (and when) the server cut a connection, told by the
  kernel (TCP_INFO) without reading from it: reading would be the progress a client that
  leaves its answers unread must not make.
- `HealthProbe`: in a thread, GET /healthz every ~50 ms on the public port (alternately
  on one keep-alive connection and on a fresh one) from an address no attacker uses,
  recording each latency; a probe without an answer counts as infinite.
- `rss`/`cpu_seconds`: the server process's resident memory and CPU time (/proc);
  `log_errors`: what the server logged as an error.
- WebSocket: `ws_open` (a raw handshake), `ws_frame` (any client frame, well-formed or
  not), `ws_read`/`ws_frames` (the server's frames, parsed).

Every wait here is bounded in time and every loop in count: a hung server fails a test, it
never hangs the suite.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import math
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from tests.server import Server

# Linux routes all of 127.0.0.0/8 to the loopback interface, so a test can speak from many
# addresses: attackers use their own, the probe its own (the per-address connection cap
# of an attack must not be what refuses the probe).
PROBE_SOURCE = "127.0.0.200"

# tcpi_state values (include/net/tcp_states.h)
TCP_ESTABLISHED = 1
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8


def address(server: Server, internal: bool = False) -> tuple[str, int]:
    host, _, port = (
        (server.internal_url if internal else server.url).removeprefix("http://").rpartition(":")
    )
    return host, int(port)


def source(n: int) -> str:
    """A loopback address of its own for attacker `n` (1-198), never the probe's."""
    assert 1 <= n <= 198
    return f"127.0.0.{n + 1}"


def connect_socket(
    server: Server,
    *,
    src: str | None = None,
    internal: bool = False,
    timeout: float = 5.0,
    rcvbuf: int | None = None,
    sndbuf: int | None = None,
) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf is not None:  # before connect: the window the server sees
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if src is not None:
            sock.bind((src, 0))
        sock.settimeout(timeout)
        sock.connect(address(server, internal))
    except BaseException:
        sock.close()
        raise
    return sock


# -- answers ---------------------------------------------------------------------------------
@dataclass
class Answer:
    """One HTTP answer as it came over the wire."""

    status: int
    reason: bytes
    fields: list[tuple[str, str]]  # names lower-cased, in order, repeats kept
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.fields if k == name]
        return ", ".join(values) if values else None

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def problem_type(self) -> str | None:
        """The problem's `type` if this is an application/problem+json answer."""
        if self.header("content-type") != "application/problem+json":
            return None
        try:
            kind = self.json().get("type")
        except (ValueError, AttributeError):
            return None
        return kind if isinstance(kind, str) else None

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.raw_head[:300]!r} body={self.body[:200]!r}>"


class BadAnswer(AssertionError):
    """The server sent bytes that are no HTTP/1.1 answer."""


def parse_answer(buffer: bytes, head_only: bool = False) -> tuple[Answer, int] | None:
    """The first complete answer in `buffer` and the bytes it took; None if incomplete."""
    if not buffer.startswith(b"HTTP/1.1 "[: len(buffer)]):
        raise BadAnswer(f"not an HTTP answer: {buffer[:200]!r}")
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > 65_536:
            raise BadAnswer(f"an answer's head over 64 KB: {buffer[:200]!r}")
        return None
    head = buffer[:end]
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] != b"HTTP/1.1" or not parts[1].isdigit():
        raise BadAnswer(f"bad status line: {lines[0][:200]!r}")
    status = int(parts[1])
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise BadAnswer(f"bad header line: {line[:200]!r}")
        fields.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
    start = end + 4
    size = 0
    if not (head_only or 100 <= status < 200 or status in (204, 304)):
        lengths = [v for k, v in fields if k == "content-length"]
        if len(lengths) > 1:
            raise BadAnswer(f"{len(lengths)} Content-Length fields: {head!r}")
        if any(k == "transfer-encoding" for k, _ in fields):
            raise BadAnswer(f"chunked answers are not expected: {head!r}")
        size = int(lengths[0]) if lengths else 0
    if len(buffer) < start + size:
        return None
    answer = Answer(
        status, parts[2] if len(parts) > 2 else b"", fields, buffer[start : start + size], head
    )
    return answer, start + size


def parse_answers(data: bytes) -> tuple[list[Answer], bytes]:
    """Every complete answer in `data`, and what is left over."""
    answers = []
    while data:
        parsed = parse_answer(data)
        if parsed is None:
            break
        answer, used = parsed
        answers.append(answer)
        data = data[used:]
    return answers, data


# -- connections -----------------------------------------------------------------------------
class Conn:
    """A raw client connection with a read buffer. Every read waits at most its timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.ended: str | None = None  # "eof" or "reset" once the server ended it

    @classmethod
    def open(
        cls,
        server: Server,
        *,
        src: str | None = None,
        internal: bool = False,
        timeout: float = 5.0,
        rcvbuf: int | None = None,
    ) -> Conn:
        return cls(
            connect_socket(server, src=src, internal=internal, timeout=timeout, rcvbuf=rcvbuf)
        )

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes, timeout: float = 5.0) -> bool:
        """Sends all of `data`; False if the server ended the connection (or stopped
        reading for `timeout`) first."""
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
        except (OSError, TimeoutError):
            return False
        return True

    def send_some(self, data: bytes, within: float) -> int:
        """Sends what the kernel takes within `within` seconds (a server that stopped
        reading makes this stop); the bytes sent."""
        return send_some(self.sock, data, within)

    def read_more(self, deadline: float) -> bool:
        """One read into the buffer; False once the connection has ended or on timeout."""
        if self.ended:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        except ConnectionResetError:
            self.ended = "reset"
            return False
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
                self.ended = "reset"
                return False
            raise
        if not chunk:
            self.ended = "eof"
            return False
        self.buffer += chunk
        return True

    def answer(self, timeout: float = 5.0, head_only: bool = False) -> Answer | None:
        """The next answer; None if the server ended the connection first. Raises
        TimeoutError if no complete answer came within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = parse_answer(self.buffer, head_only)
            if parsed is not None:
                answer, used = parsed
                self.buffer = self.buffer[used:]
                return answer
            if not self.read_more(deadline):
                if self.ended:
                    if self.buffer:
                        raise BadAnswer(f"cut mid-answer: {self.buffer[:300]!r}")
                    return None
                raise TimeoutError(f"no answer within {timeout} s (have {self.buffer[:300]!r})")

    def until_end(self, timeout: float) -> tuple[list[Answer], str]:
        """Every answer until the server ends the connection or `timeout` passes, and how
        it ended: "eof", "reset", or "open" (still open at the timeout)."""
        deadline = time.monotonic() + timeout
        while self.read_more(deadline):
            pass
        answers, rest = parse_answers(self.buffer)
        self.buffer = rest
        return answers, self.ended or "open"

    def read_raw(self, timeout: float, until: Callable[[bytes], bool] | None = None) -> bytes:
        """Reads raw bytes until the connection ends, `until(buffer)` holds, or the
        timeout; returns (and consumes) the whole buffer."""
        deadline = time.monotonic() + timeout
        while not (until is not None and until(self.buffer)) and self.read_more(deadline):
            pass
        data, self.buffer = self.buffer, b""
        return data

    def time_to_end(self, limit: float) -> float | None:
        """Reads and drops everything until the server ends the connection: the seconds
        that took, or None if it was still open after `limit`."""
        started = time.monotonic()
        deadline = started + limit
        while self.read_more(deadline):
            self.buffer = self.buffer[-65_536:]
        return time.monotonic() - started if self.ended else None


def send_some(sock: socket.socket, data: bytes, within: float) -> int:
    """Sends what the kernel takes within `within` seconds; the bytes sent (fewer when
    the server stops reading, or ends the connection)."""
    deadline = time.monotonic() + within
    view = memoryview(data)
    sent = 0
    sock.setblocking(False)
    try:
        while sent < len(view):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not ready(sock, write=True, timeout=min(left, 0.05)):
                continue
            try:
                sent += sock.send(view[sent : sent + 262_144])
            except BlockingIOError:
                continue
            except OSError:
                break
    finally:
        sock.setblocking(True)
    return sent


def ready(sock: socket.socket, write: bool = False, timeout: float = 0.0) -> bool:
    """Whether `sock` is readable (or writable) within `timeout` seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE if write else selectors.EVENT_READ)
        return bool(selector.select(timeout))


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of our end (TCP_INFO's first byte), read without reading
    any data: ESTABLISHED while open, CLOSE_WAIT once the server sent its FIN, CLOSE once
    it reset the connection."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return TCP_CLOSE
    return info[0]


def cut(sock: socket.socket) -> bool:
    return tcp_state(sock) != TCP_ESTABLISHED


def wait_cut(
    socks: list[socket.socket], limit: float, since: float | None = None
) -> list[float | None]:
    """For each socket, the seconds from `since` (default: now) until the server ended
    the connection (FIN or reset), watched through TCP_INFO without reading anything;
    None for those still open after `limit` seconds from the call."""
    started = time.monotonic()
    origin = started if since is None else since
    deadline = started + limit
    result: list[float | None] = [None] * len(socks)
    while True:
        now = time.monotonic()
        for i, sock in enumerate(socks):
            if result[i] is None and cut(sock):
                result[i] = now - origin
        if all(r is not None for r in result) or now > deadline:
            return result
        time.sleep(0.02)


def wait_for(check: Callable[[], bool], limit: float, every: float = 0.05) -> bool:
    """Polls `check` until it holds (True) or `limit` seconds pass (False)."""
    deadline = time.monotonic() + limit
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


# -- the server process ---------------------------------------------------------------------
def rss(pid: int) -> int:
    """Resident memory of process `pid` in bytes (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads) in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # after the ")" of comm: state is field 3, so utime (14) and stime (15) are 11 and 12
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MiB = 1024 * 1024


# -- the probe -------------------------------------------------------------------------------
_PROBE_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: probe\r\nUser-Agent: health-probe\r\n\r\n"


class HealthProbe:
    """Another client, meanwhile: GETs /healthz every `interval` seconds from its own
    address, on one keep-alive connection and (every other probe) on a fresh connection,
    and records each latency (connect included for a fresh one). A probe without an
    answer within `timeout` counts as infinite (and its connection is replaced).

        with HealthProbe(server) as probe:
            ...the attack...
        probe.assert_responsive(0.2)
    """

    def __init__(
        self,
        server: Server,
        interval: float = 0.05,
        timeout: float = 1.0,
        src: str = PROBE_SOURCE,
        fresh: bool = True,
    ) -> None:
        self._server = server
        self._interval = interval
        self._timeout = timeout
        self._src = src
        self._fresh = fresh
        self.samples: list[tuple[float, float, str]] = []  # (when, latency, how)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)
        self._conn: Conn | None = None
        self._started = 0.0
        self._switch = 0.005

    def __enter__(self) -> HealthProbe:
        # The probe thread waits for the GIL after each of its syscalls; behind a busy
        # attacker thread that is 5 ms a time by default, which would be measured as the
        # server's latency. A short switch interval keeps the probe's own delays small.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        self._started = time.monotonic()
        self._conn = self._connect()  # before the attack: an existing client
        self._thread.start()
        wait_for(lambda: len(self.samples) >= 2, 2.0, 0.01)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # one more probe after the attack: the server must also be fine once it is over
        taken = len(self.samples)
        wait_for(lambda: len(self.samples) > taken, 2.0, 0.01)
        self._stop.set()
        self._thread.join(5)
        sys.setswitchinterval(self._switch)
        if self._conn is not None:
            self._conn.close()

    def _connect(self) -> Conn:
        return Conn.open(self._server, src=self._src, timeout=self._timeout)

    def _run(self) -> None:
        count = 0
        while not self._stop.is_set():
            began = time.monotonic()
            fresh = self._fresh and count % 2 == 1
            count += 1
            latency, how = self._probe(fresh)
            self.samples.append((began - self._started, latency, how))
            rest = self._interval - (time.monotonic() - began)
            if rest > 0:
                self._stop.wait(rest)

    def _probe(self, fresh: bool) -> tuple[float, str]:
        began = time.monotonic()
        how = "fresh" if fresh else "kept"
        try:
            if fresh:
                with self._connect() as conn:
                    self._ask(conn, began)
                return time.monotonic() - began, how
            if self._conn is None:
                self._conn = self._connect()
                how = "kept (reconnected)"
            if not self._ask(self._conn, began):
                # The server closed the idle connection as the request went out (the
                # keep-alive race): nothing was answered, so a client sends it again on a
                # new connection, as browsers do. That is no sign of an unresponsive server.
                self._drop_kept()
                self._conn = self._connect()
                how = "kept (closed while idle: sent again)"
                if not self._ask(self._conn, began):
                    raise ConnectionError(f"closed without an answer ({self._conn.ended})")
            return time.monotonic() - began, how
        except (OSError, TimeoutError, BadAnswer, ConnectionError) as exc:
            self.failures.append(f"{time.monotonic() - self._started:.2f}s {how}: {exc!r}")
            self._drop_kept()
            return math.inf, how

    def _ask(self, conn: Conn, began: float) -> bool:
        """One GET /healthz on `conn`: True once answered 200, False if the connection
        ended before any byte of an answer; raises on anything else."""
        if not conn.send(_PROBE_REQUEST, self._timeout):
            if conn.buffer:
                raise ConnectionError("send failed")
            return False
        answer = conn.answer(max(0.01, self._timeout - (time.monotonic() - began)))
        if answer is None:
            return False
        if answer.status != 200:
            raise ConnectionError(f"status {answer.status}: {answer!r}")
        if answer.closes and conn is self._conn:
            self._drop_kept()
        return True

    def _drop_kept(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def latencies(self) -> list[float]:
        return [latency for _, latency, _ in self.samples]

    @property
    def worst(self) -> float:
        return max(self.latencies, default=math.inf)

    def assert_responsive(self, bound: float = 0.2, min_samples: int = 3) -> None:
        """Every probe answered within `bound` seconds (and there were probes)."""
        samples = list(self.samples)
        assert len(samples) >= min_samples, f"only {len(samples)} probes ran: {self.failures}"
        slow = [
            (round(t, 2), round(latency, 3), how) for t, latency, how in samples if latency > bound
        ]
        assert not slow, (
            f"{len(slow)} of {len(samples)} /healthz probes over {bound * 1000:.0f} ms "
            f"(at s, latency s, connection): {slow[:10]}; failures: {self.failures[:5]}"
        )


# -- WebSocket -------------------------------------------------------------------------------
WS_CONTINUATION, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def ws_request(
    path: str = "/ws", *, key: str | None = None, origin: str | None = None, extra: str = ""
) -> bytes:
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: x",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        f"Sec-WebSocket-Key: {key}",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def ws_open(
    server: Server,
    *,
    token: str | None = None,
    src: str | None = None,
    origin: str | None = None,
    rcvbuf: int | None = None,
    timeout: float = 5.0,
) -> Conn:
    """A raw WebSocket client past the handshake (asserted: 101)."""
    conn = Conn.open(server, src=src, rcvbuf=rcvbuf, timeout=timeout)
    path = "/ws" if token is None else f"/ws?token={token}"
    conn.send(ws_request(path, origin=origin))
    answer = conn.answer(timeout, head_only=True)
    if answer is None or answer.status != 101:
        conn.close()
        raise AssertionError(f"upgrade refused: {answer!r}")
    return conn


def ws_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """A client frame; `length` overrides the length the header declares."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _xor(payload, key)


def _xor(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def ws_text(message: dict[str, Any] | str) -> bytes:
    text = message if isinstance(message, str) else json.dumps(message)
    return ws_frame(WS_TEXT, text.encode())


def ws_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The server's frames (unmasked) in `data`, and the bytes of an incomplete last one."""
    frames, at = [], 0
    while at + 2 <= len(data):
        opcode, size, head = data[at] & 0x0F, data[at + 1] & 0x7F, 2
        if size == 126:
            if at + 4 > len(data):
                break
            size, head = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif size == 127:
            if at + 10 > len(data):
                break
            size, head = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        if at + head + size > len(data):
            break
        frames.append((opcode, data[at + head : at + head + size]))
        at += head + size
    return frames, data[at:]


def ws_read(
    conn: Conn, timeout: float, until: Callable[[list[tuple[int, bytes]]], bool] | None = None
) -> list[tuple[int, bytes]]:
    """The server's frames until `until(frames)` holds, a close frame arrives, the
    connection ends, or `timeout` passes (an incomplete frame stays in the buffer)."""
    deadline = time.monotonic() + timeout
    frames: list[tuple[int, bytes]] = []
    while True:
        parsed, conn.buffer = ws_frames(conn.buffer)
        frames += parsed
        if (until is not None and until(frames)) or any(op == WS_CLOSE for op, _ in parsed):
            return frames
        if not conn.read_more(deadline):
            parsed, conn.buffer = ws_frames(conn.buffer)
            return frames + parsed


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    """The code of the (last) close frame among `frames`; None if there is none."""
    for opcode, payload in reversed(frames):
        if opcode == WS_CLOSE:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return None


def messages(frames: list[tuple[int, bytes]]) -> list[dict[str, Any]]:
    """The JSON text frames among `frames`."""
    return [json.loads(payload) for opcode, payload in frames if opcode == WS_TEXT]


@contextlib.contextmanager
def many(conns: list[Conn]) -> Iterator[list[Conn]]:
    """Closes every connection of `conns` on the way out."""
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()


@contextlib.contextmanager
def sockets(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    """Closes every socket of `socks` on the way out."""
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def log_errors(server: Server) -> list[str]:
    """The server's log lines that report an error: a failed handler, an exception in a
    protocol callback (uvloop logs those and drops the connection), a traceback."""
    markers = ('"level":"error"', '"level":"critical"', "Traceback", "Fatal error", "Exception in")
    return [line for line in server.output().splitlines() if any(m in line for m in markers)]
