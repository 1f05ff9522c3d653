"""Property-based fuzz of raw request bytes against one running server (issue 12).

Inputs mix well-formed request skeletons (every route, methods, versions, the fields that
decide framing and routing) with what breaks them: wrong or doubled lengths, chunked
bodies with bad sizes and trailers, header injection (CR, LF, NUL in names and values),
bare LF or CR line ends, pipelines of several requests, byte-level mutations of all of
it, and plain garbage. Each input goes out on a fresh connection, which is then
half-closed; the property:

- whatever comes back is well-framed HTTP/1.1 answers, each with a status < 500 (4xx
  ones problem+json);
- the server ends the connection within BOUND seconds (it never hangs).

After the run the process is alive, answers /healthz, and logged no error (an exception
in a protocol callback is logged by uvloop, and the connection silently dropped).

Deterministic (derandomized, no example database) and bounded: 300 examples, about 10 s.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from surge.auth import mint
from tests.hostile import Answer, BadAnswer, Conn, log_errors, parse_answer, send_some, source
from tests.server import SECRET, Server
from tests.ws import embedded

pytestmark = pytest.mark.xdist_group("hostile")

BOUND = 3.0  # seconds from the last byte sent to the end of the connection
MAX_HEADER = 2048  # small limits: the fuzz reaches them
MAX_BODY = 2048


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with embedded(
        tmp_path_factory.mktemp("fuzz"),
        header_timeout="1",
        keepalive_timeout="1",
        send_timeout="1",
        max_header_bytes=str(MAX_HEADER),
        max_body_bytes=str(MAX_BODY),
    ) as running:
        yield running


TOKEN = mint(SECRET, "fuzzer").encode()
ADMIN = mint(SECRET, "root", admin=True).encode()


def mostly(
    common: st.SearchStrategy[bytes], rare: st.SearchStrategy[bytes]
) -> st.SearchStrategy[bytes]:
    """`common` about nine times in ten, else `rare`: mostly valid skeletons, a part broken
    now and then (a broken part is refused at once, hiding what follows it). The rare
    branch is a middle value: Hypothesis favours the bounds of a range."""
    return st.integers(min_value=0, max_value=9).flatmap(lambda n: rare if n == 4 else common)


TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VISIBLE = "".join(chr(c) for c in range(0x20, 0x7F)) + "\t"

METHODS = mostly(
    st.sampled_from([b"GET"] * 5 + [b"POST"] * 4 + [b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]),
    # (no HEAD: its answer has a length and no body, so the answers would not parse)
    st.sampled_from([b"TRACE", b"CONNECT", b"PRI", b"get", b"G T"])
    | st.binary(min_size=1, max_size=12),
)
PATHS = mostly(
    st.sampled_from(
        [
            b"/healthz",
            b"/readyz",
            b"/openapi.json",
            b"/orders/1",
            b"/orders/0",
            b"/orders/99999999999999999999999",
            b"/orders/%2F1",
            b"/orders/%2f1",
            b"/sales",
            b"/sales/1",
            b"/sales/1/orders",
            b"/users/me/orders?limit=5&cursor=zz",
            b"/ws",
            b"/ws?token=" + TOKEN,
            b"/demo",
            b"/metrics",
            b"/%6detrics",
            b"/debug/tasks",
            b"*",
            b"http://x/healthz",
        ]
    ),
    st.sampled_from([b"/" + b"a" * 3000, b"/a b", b"/\x00", b""])
    | st.binary(max_size=40).map(lambda raw: b"/" + raw),
)
VERSIONS = mostly(
    st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0"]),
    st.sampled_from([b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/1.1 ", b""]),
)
NAMES = mostly(
    st.sampled_from(
        [
            b"Host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Connection",
            b"Expect",
            b"Authorization",
            b"Upgrade",
            b"Sec-WebSocket-Key",
            b"Sec-WebSocket-Version",
            b"Idempotency-Key",
            b"X-Request-ID",
            b"Origin",
            b"Content-Type",
            b"Trailer",
            b"X-Forwarded-For",
        ]
    )
    | st.text(TOKEN_CHARS, min_size=1, max_size=20).map(str.encode),
    st.sampled_from([b"Bad Name", b"X-\x00", b"", b"X:Y", b"\xff"])
    | st.binary(min_size=1, max_size=20),
)
VALUES = mostly(
    st.sampled_from(
        [
            b"x",
            b"chunked",
            b"identity",
            b"chunked, chunked",
            b"gzip, chunked",
            b"close",
            b"keep-alive",
            b"Upgrade",
            b"websocket",
            b"100-continue",
            b"0",
            b"5",
            b"-1",
            b"0x10",
            b"99999999999999999999",
            b"Bearer " + TOKEN,
            b"Bearer " + ADMIN,
            b"Bearer x.y.z",
            b"dGhlIHNhbXBsZSBub25jZQ==",
            b"13",
            b"application/json",
            b" spaced ",
            b"x" * 3000,
        ]
    )
    | st.text(VISIBLE, max_size=40).map(str.encode),
    st.sampled_from([b"a\r\nInjected: 1", b"a\nInjected: 1", b"a\rb", b"a\x00b", b"\xff\xfe"])
    | st.binary(max_size=40),
)
EOLS = mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\n ", b"\n\r"]))
BODIES = st.sampled_from(
    [b"", b'{"quantity":1}', b"{}", b"not json", b"x" * 3000, b'{"name":"f","stock":1}']
) | st.binary(max_size=64)
SEPARATORS = mostly(st.sampled_from([b" ", b""]), st.sampled_from([b"\t", b"  ", b" \t "]))


@st.composite
def framings(draw: st.DrawFn) -> tuple[list[tuple[bytes, bytes]], bytes, bool]:
    """A body and the fields that frame it, right or wrong, and whether the request they
    make ends where its framing says (no body left over, none missing)."""
    body = draw(BODIES)
    kind = draw(
        st.sampled_from(
            ["none"] * 3 + ["length"] * 3 + ["chunked"] * 2 + ["wrong-length", "bad-chunked"]
        )
    )
    if kind == "none":  # a body without framing is read as the next request, now and then
        if draw(st.integers(min_value=0, max_value=9)) == 4:
            return [], body, not body
        return [], b"", True
    if kind == "length":
        return [(b"Content-Length", str(len(body)).encode())], body, True
    if kind == "wrong-length":
        length = draw(st.integers(min_value=0, max_value=len(body) + 10))
        return [(b"Content-Length", str(length).encode())], body, length == len(body)
    sizes = draw(st.lists(st.integers(min_value=1, max_value=16), max_size=6))
    chunks, at = [], 0
    for size in sizes:
        piece = body[at : at + size]
        at += size
        if not piece:
            break
        chunks.append(b"%x\r\n%s\r\n" % (len(piece), piece))
    trailer = draw(
        st.sampled_from([b"", b"Authorization: Bearer " + ADMIN + b"\r\n", b"X-Trailer: 1\r\n"])
    )
    encoded = b"".join(chunks) + b"0\r\n" + trailer + b"\r\n"
    if kind == "bad-chunked":
        bad = draw(
            st.sampled_from(
                [b"zz\r\n", b"-1\r\n", b"FFFFFFFFFFFFFFFFFFFF\r\n", b"5;ext\r\nab\r\n", b"\r\n"]
            )
        )
        where = draw(st.integers(min_value=0, max_value=len(encoded)))
        encoded = encoded[:where] + bad + encoded[where:]
    return [(b"Transfer-Encoding", b"chunked")], encoded, kind == "chunked"


Sample = tuple[bytes, bool]  # bytes, and whether every request in them is framed whole
FRAMING = (b"content-length", b"transfer-encoding")


@st.composite
def requests(draw: st.DrawFn) -> Sample:
    """One request: a skeleton (Host, framing, often a token and an idempotency key, a few
    more fields) with a part broken now and then."""
    eol = draw(EOLS)
    line = draw(METHODS) + b" " + draw(PATHS)
    version = draw(VERSIONS)
    if version:
        line += b" " + version
    framing, body, complete = draw(framings())
    fields = list(framing)
    if draw(st.integers(min_value=0, max_value=9)) != 4:  # (see `mostly`)
        fields.append((b"Host", b"x"))
    if draw(st.booleans()):
        fields.append((b"Authorization", b"Bearer " + draw(st.sampled_from([TOKEN, ADMIN]))))
    if draw(st.booleans()):
        fields.append((b"Idempotency-Key", b"k-%d" % draw(st.integers(0, 3))))
    more = draw(st.lists(st.tuples(NAMES, VALUES), max_size=3))
    complete = complete and eol == b"\r\n" and all(n.lower() not in FRAMING for n, _ in more)
    fields += more
    order = draw(st.permutations(range(len(fields))))
    head = b"".join(fields[i][0] + b":" + draw(SEPARATORS) + fields[i][1] + eol for i in order)
    return line + eol + head + eol + body, complete


@st.composite
def mutated(draw: st.DrawFn, inner: st.SearchStrategy[Sample]) -> Sample:
    """`inner`'s bytes with a few bytes flipped, inserted, deleted, or cut short."""
    data = bytearray(draw(inner)[0])
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not data:
            break
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        operation = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "control"]))
        if operation == "flip":
            data[at] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "control":
            data[at:at] = draw(st.sampled_from([b"\r", b"\n", b"\x00", b"\r\n", b" ", b":"]))
        elif operation == "delete":
            del data[at]
        else:
            del data[at:]
    return bytes(data), False


PIPELINES = st.lists(requests(), min_size=1, max_size=3).map(
    lambda samples: (b"".join(b for b, _ in samples), all(c for _, c in samples))
)
PAYLOADS: st.SearchStrategy[Sample] = st.integers(min_value=0, max_value=9).flatmap(
    lambda n: (
        st.binary(min_size=1, max_size=300).map(lambda b: (b, False))  # 1 in 10: garbage
        if n == 4
        else mutated(PIPELINES)  # 3 in 10: mutated
        if n in (3, 5, 6)
        else PIPELINES
    )  # 6 in 10: requests as sent, one to three pipelined
)


SENTINEL = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: sentinel\r\nConnection: close\r\n\r\n"
)


def exchange(server: Server, payload: bytes, src: str) -> tuple[list[Answer], str]:
    """Sends `payload` and a sentinel request on a fresh connection, half-closes, and
    reads to the end (at most BOUND seconds): the answers, and how the connection ended
    ("eof", "reset", or "open" at the bound)."""
    with Conn.open(server, src=src) as conn:
        send_some(conn.sock, payload + SENTINEL, 2.0)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server ended it already
        data = conn.read_raw(BOUND)
        ended = conn.ended or "open"
    answers = []
    while data:
        parsed = parse_answer(data)
        if parsed is None:
            if ended == "open":
                break  # cut short by the bound: reported as a hang
            raise BadAnswer(f"an answer cut short: {data[:300]!r}")
        answer, used = parsed
        data = data[used:]
        answers.append(answer)
        if answer.status == 101:
            break  # what follows is WebSocket frames
    return answers, ended


def check(payload: bytes, complete: bool, answers: list[Answer], ended: str) -> None:
    """The property, for one input."""
    shown = f"{payload[:600]!r} -> {[a.status for a in answers]}, {ended}"
    assert ended != "open", f"still open {BOUND} s after the last byte: {shown}"
    for answer in answers:
        assert answer.status < 500, f"{answer!r}: {shown}"
        if answer.status >= 400:
            assert answer.problem_type is not None, f"{answer!r}: {shown}"
    ids = [a.header("x-request-id") for a in answers]
    if "sentinel" in ids:
        assert ids.index("sentinel") == len(ids) - 1, f"answers after the last request: {shown}"
    elif complete:
        # Every request was framed whole, so the sentinel was read as a request of its
        # own: it is answered, unless the server said it stopped reading (an answer with
        # `connection: close`, or a switch of protocols). Never a silent drop.
        assert any(a.closes or a.status == 101 for a in answers), (
            f"the requests after an answer kept alive were dropped: {shown}"
        )


SMUGGLE = (
    b"POST /sales HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
)


def test_fuzzed_requests_get_clean_answers_and_never_hang(fuzz_server: Server) -> None:
    sources = [source(100 + n) for n in range(8)]
    count = 0

    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(sample=PAYLOADS)
    @example(sample=(SMUGGLE, False))
    @example(sample=(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 100, True))
    @example(sample=(b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", True))
    @example(sample=(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False))
    @example(sample=(b"\r\n" * 200, True))
    def run(sample: Sample) -> None:
        nonlocal count
        count += 1
        payload, complete = sample
        answers, ended = exchange(fuzz_server, payload, sources[count % len(sources)])
        check(payload, complete, answers, ended)

    started = time.monotonic()
    run()
    took = time.monotonic() - started
    assert fuzz_server.process.poll() is None, "the server died"
    assert httpx.get(fuzz_server.url + "/healthz", timeout=2).status_code == 200
    assert log_errors(fuzz_server) == []
    assert took < 60, f"{count} examples took {took:.0f} s"
