"""Token buckets, caller identity and the 429 answer."""

from __future__ import annotations

import pytest

from surge.auth import Authenticator, mint
from surge.backends.memory_buckets import LocalBuckets
from surge.ground.admission import Verdict
from surge.ground.buckets import Bucket, Policy
from surge.ground.web import Request
from surge.protect.clients import Clients
from surge.protect.ratelimit import RateLimiter
from surge.setting_parsers import parse_networks, parse_policy

SECRET = "unit-secret-0123456789abcdef-0123456789"
READ = Policy("read", rate=10.0, burst=3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _buckets() -> tuple[LocalBuckets, Clock]:
    buckets, clock = LocalBuckets(max_entries=100), Clock()
    buckets._now = clock
    return buckets, clock


def _request(client: str = "10.1.2.3", headers: dict[bytes, bytes] | None = None) -> Request:
    return Request("GET", "/orders/1", "", headers or {}, b"", client, b"rid")


def test_a_bucket_spends_the_burst_then_refuses_with_the_wait_for_one_token() -> None:
    buckets, clock = _buckets()
    assert buckets.check(READ, "u:a") == Verdict(True, 2, 0.0)
    buckets.check(READ, "u:a")
    buckets.check(READ, "u:a")
    verdict = buckets.check(READ, "u:a")
    assert not verdict.allowed and verdict.remaining == 0
    assert verdict.wait == pytest.approx(0.1)  # 10 a second
    clock.now += 0.05  # half a token later: still no
    verdict = buckets.check(READ, "u:a")
    assert not verdict.allowed and verdict.wait == pytest.approx(0.05)


def test_refill_never_exceeds_the_burst_and_ignores_clocks_going_back() -> None:
    buckets, clock = _buckets()
    for _ in range(3):
        buckets.check(READ, "u:a")  # empty
    clock.now += 3600.0
    assert buckets.check(READ, "u:a").remaining == 2  # full (3), less the one taken
    for _ in range(2):
        buckets.check(READ, "u:a")
    clock.now += 0.05  # half a token
    clock.now -= 10.0  # the clock goes back: nothing refills, nothing breaks
    verdict = buckets.check(READ, "u:a")
    assert not verdict.allowed and verdict.wait == pytest.approx(0.1)


def test_local_buckets_are_per_caller_and_refill_with_time() -> None:
    buckets, clock = _buckets()
    assert [buckets.check(READ, "u:a").allowed for _ in range(4)] == [True, True, True, False]
    assert buckets.check(READ, "u:b").allowed  # another caller has its own
    clock.now += 0.1  # one token back
    assert buckets.check(READ, "u:a").allowed
    assert not buckets.check(READ, "u:a").allowed
    other = Policy("write", rate=1.0, burst=1)
    assert buckets.check(other, "u:a").allowed  # another class, another bucket


def test_local_buckets_are_bounded() -> None:
    buckets, _ = _buckets()
    for i in range(250):
        buckets.check(READ, f"ip:{i}")
    assert len(buckets) == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [("20/40", (20.0, 40)), ("5", (5.0, 5)), ("0.5", (0.5, 1)), ("off", None), ("0", None)],
)
def test_parse_policy(text: str, expected: tuple[float, int] | None) -> None:
    assert parse_policy(text) == expected


@pytest.mark.parametrize("text", ["-1/2", "x", "5/0", "inf", "nan/3"])
def test_parse_policy_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_policy(text)


def test_policy_window_and_ttl() -> None:
    assert Policy("read", 20.0, 40).window == 2
    assert Policy("slow", 0.1, 1).window == 10
    assert Policy("read", 20.0, 40).ttl_ms == 3000


def test_caller_is_the_user_of_a_valid_token_else_the_address() -> None:
    clients = Clients(Authenticator(SECRET), ())
    token = mint(SECRET, "alice")
    assert clients.key(_request(headers={b"authorization": f"Bearer {token}".encode()})) == (
        "u:alice"
    )
    assert clients.key(_request(headers={b"authorization": b"Bearer forged"})) == "ip:10.1.2.3"
    assert clients.key(_request()) == "ip:10.1.2.3"


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    clients = Clients(Authenticator(SECRET), parse_networks("10.0.0.0/8, 192.168.1.1"))
    forwarded = {b"x-forwarded-for": b"6.6.6.6, 203.0.113.9, 192.168.1.1"}
    # from the trusted proxy 10.1.2.3: walk right to left past our own proxies
    assert clients.address(_request("10.1.2.3", forwarded)) == "203.0.113.9"
    # from anyone else the header is the client's own word: ignored
    assert clients.address(_request("198.51.100.7", forwarded)) == "198.51.100.7"
    assert clients.address(_request("10.1.2.3")) == "10.1.2.3"  # no header: the proxy
    only_ours = {b"x-forwarded-for": b"10.9.9.9"}
    assert clients.address(_request("10.1.2.3", only_ours)) == "10.9.9.9"


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("::ffff:10.1.2.3", b"203.0.113.9", "203.0.113.9"),  # dual-stack listener
        ("10.1.2.3", b"203.0.113.9:51234", "203.0.113.9"),  # a proxy that adds the port
        ("10.1.2.3", b"[2001:db8::7]:443", "2001:db8::/64"),  # IPv6: by its /64
        ("10.1.2.3", b"6.6.6.6, junk, 10.0.0.5", "10.0.0.5"),  # garbage ends the walk
        ("2001:db8:1:2::99", b"", "2001:db8:1:2::/64"),
    ],
)
def test_addresses_are_normalised(peer: str, forwarded: bytes, client: str) -> None:
    clients = Clients(Authenticator(SECRET), parse_networks("10.0.0.0/8"))
    headers = {b"x-forwarded-for": forwarded} if forwarded else {}
    assert clients.address(_request(peer, headers)) == client


def test_parse_networks_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        parse_networks("10.0.0.0/8,nope")


def test_a_refusal_is_a_429_problem_with_retry_after_and_ratelimit_fields() -> None:
    buckets, _ = _buckets()
    limiter = RateLimiter({"read": READ}, {"read": buckets}, Clients(Authenticator(SECRET), ()))
    answers = [limiter.check(_request(), "read") for _ in range(4)]
    assert answers[:3] == [None, None, None]
    status, head, body = answers[3]  # type: ignore[misc]
    assert status == 429
    text = head.decode()
    assert "content-type: application/problem+json" in text
    retry = int(text.split("retry-after: ")[1].split("\r\n")[0])
    assert 1 <= retry <= 2  # 0.1 s rounds up to 1 s, plus up to 1 s of jitter
    assert 'ratelimit-policy: "read";q=3;w=1\r\n' in text
    assert 'ratelimit: "read";r=0;t=1\r\n' in text
    assert b'"type":"/problems/rate-limited"' in body
    assert limiter.limited == {"read": 1}
    assert limiter.check(_request(), "write") is None  # no policy for the class: no limit


def test_a_held_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = Bucket(rate=10.0, burst=20.0, now=100.0)
    assert all(bucket.take(100.0) for _ in range(20))
    assert not bucket.take(100.0)
    assert not bucket.take(100.05)  # half a token
    assert bucket.take(100.15)  # one and a half
    assert not bucket.take(100.15)
    assert not bucket.take(200.0, cost=21.0)  # never more than the burst
    assert bucket.take(200.0, cost=20.0)
