from __future__ import annotations

import gc
import time
import weakref

import jwt
import pytest

from surge import tokens
from surge.auth import MAX_TOKEN_BYTES, Authenticator, load_or_create_secret, mint
from surge.ground.web import Problem

SECRET = "unit-secret-" + "0123456789" * 6


def _bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


def test_valid_token_gives_the_user_and_role() -> None:
    auth = Authenticator(SECRET)
    user = auth.user(_bearer(mint(SECRET, "alice")))
    assert (user.id, user.admin) == ("alice", False)
    admin = auth.user(_bearer(mint(SECRET, "root", admin=True)))
    assert admin.admin and not admin.service
    service = auth.user(_bearer(mint(SECRET, "backend", role="service")))
    assert (service.service, service.admin, user.service) == (True, False, False)
    other = auth.user(_bearer(mint(SECRET, "x", role="superuser")))  # unknown: no role at all
    assert not (other.admin or other.service)


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Basic dXNlcjpwYXNz",
        b"Bearer",
        b"Bearer not.a.jwt",
        _bearer(mint("another-secret-0123456789-0123456789", "alice")),
        _bearer(jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")),  # no exp
        _bearer(jwt.encode({"sub": 5, "exp": time.time() + 60}, SECRET, algorithm="HS256")),
        _bearer(jwt.encode({"sub": "x" * 65, "exp": time.time() + 60}, SECRET, algorithm="HS256")),
        _bearer(jwt.encode({"sub": "alice", "exp": time.time() + 60}, SECRET, algorithm="HS512")),
    ],
    # fixed ids: tokens made with the clock differ between xdist workers' collections
    ids=[
        "none",
        "empty",
        "basic",
        "bearer-alone",
        "not-a-jwt",
        "other-secret",
        "no-exp",
        "sub-not-a-string",
        "sub-too-long",
        "hs512",
    ],
)
def test_bad_tokens_are_401(header: bytes | None) -> None:
    with pytest.raises(Problem) as caught:
        Authenticator(SECRET).user(header)
    assert caught.value.status == 401


def test_expired_token_has_its_own_problem_type() -> None:
    token = jwt.encode({"sub": "a", "exp": int(time.time()) - 5}, SECRET, algorithm="HS256")
    with pytest.raises(Problem) as caught:
        Authenticator(SECRET).user(_bearer(token))
    assert caught.value.kind == "token-expired"


def test_verified_tokens_are_cached_until_they_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = Authenticator(SECRET)
    header = _bearer(mint(SECRET, "alice", ttl=1))
    calls = []
    real_verify = tokens.verify
    monkeypatch.setattr(tokens, "verify", lambda *a, **k: calls.append(1) or real_verify(*a, **k))
    first = auth.user(header)
    assert auth.user(header) is first
    assert len(calls) == 1
    time.sleep(max(0.0, first.expires - time.time()) + 0.05)
    with pytest.raises(Problem) as caught:
        auth.user(header)  # the cached entry has expired: re-verified, and refused
    assert caught.value.kind == "token-expired"
    assert len(calls) == 2


def test_refusals_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = Authenticator(SECRET)
    header = _bearer(mint("another-secret-0123456789-0123456789", "alice"))
    calls = []
    real_verify = tokens.verify
    monkeypatch.setattr(tokens, "verify", lambda *a, **k: calls.append(1) or real_verify(*a, **k))
    for _ in range(5):
        with pytest.raises(Problem) as caught:
            auth.user(header)
        assert caught.value.status == 401
    assert len(calls) == 1


def test_token_cache_is_bounded_in_entries() -> None:
    auth = Authenticator(SECRET, cache_size=10)
    for i in range(50):
        auth.user(_bearer(mint(SECRET, f"u{i}")))
    assert len(auth._users.entries) <= 10


def test_token_caches_are_bounded_in_bytes() -> None:
    """Issue 12 #3: 3,000 distinct 15 KB bogus tokens once held 149 MiB."""
    auth = Authenticator(SECRET, cache_size=100_000, cache_bytes=1_000_000)
    for i in range(3000):
        with pytest.raises(Problem):
            auth.user(b"Bearer " + str(i).encode() + b"x" * 3000)  # under MAX_TOKEN_BYTES
    assert auth._refusals.size_bytes <= 1_000_000 // 8
    assert auth.cache_bytes <= 1_000_000 // 8
    for i in range(3000):
        auth.user(_bearer(mint(SECRET, f"user{i}")))
    assert auth._users.size_bytes <= 1_000_000
    assert 1_000_000 // 8 < auth.cache_bytes <= 1_000_000 + 1_000_000 // 8


def test_bad_tokens_do_not_push_good_ones_out() -> None:
    auth = Authenticator(SECRET, cache_size=80)
    good = _bearer(mint(SECRET, "alice"))
    auth.user(good)
    for i in range(1000):
        with pytest.raises(Problem):
            auth.user(b"Bearer bogus" + str(i).encode())
    assert good in auth._users.entries


def test_oversized_headers_are_refused_unread_and_not_cached() -> None:
    auth = Authenticator(SECRET)
    with pytest.raises(Problem) as caught:
        auth.user(b"Bearer " + b"x" * MAX_TOKEN_BYTES)
    assert caught.value.status == 401
    assert auth.cache_bytes == 0


def test_a_cached_refusal_keeps_no_traceback_alive() -> None:
    """The cached refusal once was the raised Problem, with the caller's frames (request,
    headers, read buffer) on its traceback."""

    class Sentinel:
        pass

    auth = Authenticator(SECRET)
    alive = weakref.WeakSet[Sentinel]()

    def caller() -> None:
        local = Sentinel()  # a frame local, like the request a handler holds
        alive.add(local)
        auth.user(b"Bearer not.a.jwt")

    for _ in range(2):
        with pytest.raises(Problem):
            caller()
    gc.collect()
    assert len(alive) == 0
    assert isinstance(auth._refusals.entries[b"Bearer not.a.jwt"], tuple)


def test_clock_skew_within_the_leeway_is_accepted_and_never_cached_as_refused() -> None:
    """Issue 12 #7: a token issued 2 s 'in the future' (the issuer's clock ahead) was
    refused, and the refusal kept for good."""
    now = int(time.time())
    ahead = jwt.encode({"sub": "a", "iat": now + 2, "exp": now + 60}, SECRET, algorithm="HS256")
    assert Authenticator(SECRET, leeway=30).user(_bearer(ahead)).id == "a"
    strict = Authenticator(SECRET, leeway=0)
    with pytest.raises(Problem):
        strict.user(_bearer(ahead))
    assert _bearer(ahead) not in strict._refusals.entries  # it will be valid: not remembered
    time.sleep(max(0.0, now + 2 - time.time()) + 1.05)
    assert strict.user(_bearer(ahead)).id == "a"


def test_the_leeway_extends_expiry_too() -> None:
    past = jwt.encode({"sub": "a", "exp": int(time.time()) - 5}, SECRET, algorithm="HS256")
    assert Authenticator(SECRET, leeway=30).user(_bearer(past)).id == "a"
    with pytest.raises(Problem):
        Authenticator(SECRET, leeway=1).user(_bearer(past))


def test_generated_secret_is_stable_and_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secret"
    first = load_or_create_secret(path)
    assert load_or_create_secret(path) == first
    assert len(first) >= 32
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "sub", ["", "x" * 65, "a\x00b", "line\r\nbreak", "bidi\u202eevil", "tab\there"]
)
def test_a_subject_must_be_1_to_64_printable_characters(sub: str) -> None:
    with pytest.raises(Problem) as caught:
        Authenticator(SECRET).user(_bearer(mint(SECRET, sub)))
    assert caught.value.status == 401 and caught.value.kind == "unauthorized"


def test_a_printable_unicode_subject_is_a_user() -> None:
    assert Authenticator(SECRET).user(_bearer(mint(SECRET, "zoë-42"))).id == "zoë-42"
