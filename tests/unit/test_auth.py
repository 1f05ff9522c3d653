from __future__ import annotations

import time

import jwt
import pytest

from surge.auth import Authenticator, load_or_create_secret, mint
from surge.http.response import Problem

SECRET = "unit-secret-" + "0123456789" * 6


def _bearer(token: str) -> bytes:
    return f"Bearer {token}".encode()


def test_valid_token_gives_the_user_and_role() -> None:
    auth = Authenticator(SECRET)
    user = auth.user(_bearer(mint(SECRET, "alice")))
    assert (user.id, user.admin) == ("alice", False)
    admin = auth.user(_bearer(mint(SECRET, "root", admin=True)))
    assert admin.admin


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
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
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
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    for _ in range(5):
        with pytest.raises(Problem) as caught:
            auth.user(header)
        assert caught.value.status == 401
    assert len(calls) == 1


def test_token_cache_is_bounded() -> None:
    auth = Authenticator(SECRET, cache_size=10)
    for i in range(50):
        auth.user(_bearer(mint(SECRET, f"u{i}")))
    assert len(auth._cache) <= 10


def test_generated_secret_is_stable_and_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "secret"
    first = load_or_create_secret(path)
    assert load_or_create_secret(path) == first
    assert len(first) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
