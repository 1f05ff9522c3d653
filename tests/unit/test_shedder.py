"""The load shedder: Gradient2's convergence on a simulated server, admission, priority."""

from __future__ import annotations

import asyncio
import time

import pytest

from surge.ground.web import Request
from surge.http.refusal import lone_get, never_shed, refusal
from surge.protect.shedder import Gradient2, Shedder, ShedSettings


def _latency(in_flight: float, capacity: float = 50.0, base: float = 0.002) -> float:
    """A server that does `capacity` things at once in `base` s; more wait in a queue."""
    return base * max(1.0, in_flight / capacity)


def _run(limiter: Gradient2, offered: float, windows: int) -> list[tuple[float, float]]:
    trace = []
    for _ in range(windows):
        in_flight = min(offered, limiter.limit)
        rtt = _latency(in_flight)
        limiter.update(rtt, int(in_flight))
        trace.append((limiter.limit, rtt))
    return trace


def test_overload_converges_to_full_throughput_with_bounded_latency() -> None:
    limiter = Gradient2(ShedSettings(initial=20, target=0.005))  # 5 ms
    trace = _run(limiter, offered=5000, windows=2000)
    tail = trace[-500:]
    # throughput = limit / latency, at most capacity / base: the limit stays at or past
    # the capacity (no goodput lost) ...
    assert min(limit for limit, _ in tail) >= 50
    # ... and the queue it allows stays near the latency target, never at the hard cap
    assert max(rtt for _, rtt in tail) <= 0.005 * 1.2
    assert max(limit for limit, _ in tail) < 200


def test_latency_jump_shrinks_the_limit_fast() -> None:
    limiter = Gradient2(ShedSettings(initial=400, target=1.0))
    for _ in range(50):
        limiter.update(0.002, 400)  # healthy: 2 ms at full use
    before = limiter.limit
    for _ in range(10):
        limiter.update(0.010, 400)  # the dependency slows down 5x
    assert limiter.limit < before * 0.6  # at most -10 % a window (smoothing 0.2, gradient 0.5)


def test_an_idle_server_does_not_grow_the_limit() -> None:
    limiter = Gradient2(ShedSettings(initial=100))
    for _ in range(100):
        limiter.update(0.002, 10)  # far below the limit: no evidence
    assert limiter.limit == 100


def test_the_limit_stays_within_bounds() -> None:
    limiter = Gradient2(ShedSettings(initial=100, min_limit=20, max_limit=300))
    for _ in range(500):
        limiter.update(0.002, 300)
    assert limiter.limit == 300
    for _ in range(500):
        limiter.update(1.0, 300)
    assert limiter.limit == 20


def _request() -> Request:
    return Request("GET", "/orders/1", "", {}, b"", "127.0.0.1", b"rid")


def test_admission_prefers_writes_and_counts_refusals() -> None:
    shedder = Shedder(ShedSettings(initial=10, min_limit=10, write_priority=1.5))
    assert all(shedder.admit("read") for _ in range(10))
    assert not shedder.admit("read")  # reads stop at the limit
    assert all(shedder.admit("write") for _ in range(5))  # writes get the headroom
    assert not shedder.admit("write")
    assert shedder.shed == {"read": 1, "write": 1}
    for _ in range(15):
        shedder.release(0.001)
    assert shedder.working == 0


def test_cap_mode_ignores_latency() -> None:
    shedder = Shedder(ShedSettings(max_limit=3, min_limit=1, adaptive=False))
    assert [shedder.admit("read") for _ in range(4)] == [True, True, True, False]
    for _ in range(3):
        shedder.release(10.0)  # awful latency: no matter
    assert shedder.limit == 3


def test_take_marks_the_request_once() -> None:
    shedder = Shedder(ShedSettings(initial=1, min_limit=1))
    request = _request()
    assert shedder.take(request, "read") and request.slot
    assert shedder.take(request, "read")  # already holds one: not taken twice
    assert shedder.working == 1
    assert not shedder.take(_request(), "read")


def test_windows_feed_the_limit() -> None:
    shedder = Shedder(ShedSettings(initial=100, window_samples=5, window_seconds=0.0))
    for _ in range(100):
        assert shedder.admit("read")
    for _ in range(100):
        shedder.release(0.002)
    assert shedder.gradient.long_rtt == pytest.approx(0.002)


def test_a_window_with_a_late_answer_halves_the_target() -> None:
    limiter = Gradient2(ShedSettings(initial=400, smoothing=1.0))  # no smoothing: exact
    before = limiter.update(0.002, 400)  # 400 + sqrt(400): the healthy growth
    assert limiter.update(0.002, 400, late=True) == pytest.approx(before * 0.5 + before**0.5)
    limiter = Gradient2(ShedSettings(initial=400, smoothing=1.0))
    limiter.update(0.002, 10, late=True)  # the limit was not in use: not its doing
    assert limiter.limit == 400


@pytest.mark.parametrize(
    ("data", "lone"),
    [
        (b"GET /orders/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n", True),
        (b"GET /orders/1 HTTP/1.0\r\nHost: x\r\n\r\n", False),  # 1.0: its own keep-alive rules
        (b"POST /sales HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", False),  # never shed
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET /orders/1 HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET /orders/1 HTTP/1.1\r\nHost: x\r\n", False),  # not complete yet
        (b"GET /orders/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\n", False),  # body next
        (b"GET /orders/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"GET /orders/1 HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", False),
        (b"GET /orders/1 HTTP/1.1\r\nConnection: Close\r\n\r\n", False),
        (b"GET /orders/1 HTTP/1.1\r\nconnection:close\r\n\r\n", False),
        (b"GET /%72eadyz HTTP/1.1\r\nHost: x\r\n\r\n", False),  # readiness, encoded
    ],
)
def test_only_a_lone_complete_get_is_refused_unparsed(data: bytes, lone: bool) -> None:
    never = never_shed(["/healthz", "/readyz", "/metrics", "/openapi.json", "/ws"])
    assert lone_get(data, never) is lone


def test_a_late_event_loop_shrinks_the_limit() -> None:
    settings = ShedSettings(initial=100, window_samples=1, window_seconds=0.0, smoothing=1.0)
    shedder = Shedder(settings)
    assert shedder.admit("read")
    shedder.lag = 0.05  # the probe saw the loop 50 ms late: requests wait unread
    shedder.release(0.001)  # though the answered request itself was fast
    assert shedder.limit == 100 and shedder.lag == 0.0  # 1 of 100 slots: not our doing
    for _ in range(60):
        assert shedder.admit("read")
    shedder.lag = 0.05
    shedder.release(0.001)  # 60 of 100 slots were in use: the work admitted is a cause
    assert shedder.limit < 100


def test_writes_latency_does_not_feed_the_read_target() -> None:
    settings = ShedSettings(initial=100, window_samples=1, window_seconds=0.0, smoothing=1.0)
    shedder = Shedder(settings)
    for _ in range(60):
        assert shedder.admit("write")
    for _ in range(60):
        shedder.release(0.5, route_class="write")  # a slow commit is no queueing
    assert shedder.limit == 100


def test_the_probe_measures_the_loop_lag() -> None:
    async def main() -> float:
        shedder = Shedder(ShedSettings())
        shedder.start()
        await asyncio.sleep(0.015)
        time.sleep(0.04)  # noqa: ASYNC251  # the point: the loop is stuck for 40 ms
        await asyncio.sleep(0.015)
        shedder.stop()
        return shedder.lag

    assert asyncio.run(main()) >= 0.02


def test_the_unparsed_refusal_is_a_complete_answer() -> None:
    seen = set()
    for _ in range(50):
        raw = refusal(b"date: Sat, 28 Nov 2026 05:00:00 GMT\r\n", b"ab12-7")
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        assert fields[b"content-type"] == b"application/problem+json"
        assert int(fields[b"content-length"]) == len(body)
        assert fields[b"x-request-id"] == b"ab12-7" and b"date" in fields
        assert b'"type":"/problems/overloaded"' in body
        seen.add(fields[b"retry-after"])
    assert seen == {b"1", b"2"}  # drawn per refusal: refused clients spread out
