"""Bearer tokens: HS256 JWTs whose `sub` is the user id and `role` may be `admin`.

Verifying a JWT costs about 10 us (base64, JSON, HMAC); the same token arrives on every
request of a session, so verified tokens are remembered by their exact bytes until they
expire. Refusals are remembered too: a token that failed verification can never pass it
later (its signature, format or expiry will not change), so a flood of bad tokens costs a
dict lookup each, not an HMAC. The cache is keyed by the exact header bytes and bounded.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from surge.http.response import Problem

ALGORITHM = "HS256"
_CHALLENGE = (("www-authenticate", 'Bearer realm="surge"'),)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    admin: bool
    expires: float


class Authenticator:
    def __init__(self, secret: str, cache_size: int = 100_000) -> None:
        self._secret = secret
        self._cache: dict[bytes, User | Problem] = {}
        self._cache_size = cache_size

    def user(self, header: bytes | None) -> User:
        """The caller of a request, from its Authorization header; 401 problem otherwise."""
        if header is None:
            raise Problem(401, "unauthorized", "missing bearer token", _CHALLENGE)
        known = self._cache.get(header)
        if known is not None:
            if isinstance(known, Problem):
                raise known.with_traceback(None)  # a fresh traceback: no growth
            if known.expires > time.time():
                return known
        try:
            user = self._verify(header)
        except Problem as refused:
            self._remember(header, refused)
            raise
        self._remember(header, user)
        return user

    def _remember(self, header: bytes, outcome: User | Problem) -> None:
        cache = self._cache
        if len(cache) >= self._cache_size:
            cache.pop(next(iter(cache)))
        cache[header] = outcome

    def _verify(self, header: bytes) -> User:
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise Problem(
                401, "unauthorized", "expected 'Authorization: Bearer <token>'", _CHALLENGE
            )
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise Problem(401, "token-expired", "token has expired", _CHALLENGE) from None
        except jwt.PyJWTError:
            raise Problem(401, "unauthorized", "invalid token", _CHALLENGE) from None
        sub = claims["sub"]
        if not isinstance(sub, str) or not 0 < len(sub) <= 64:
            raise Problem(
                401, "unauthorized", "token subject must be a 1-64 character string", _CHALLENGE
            )
        return User(sub, claims.get("role") == "admin", float(claims["exp"]))


def mint(secret: str, user_id: str, admin: bool = False, ttl: float = 86_400.0) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + int(ttl)}
    if admin:
        claims["role"] = "admin"
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def load_or_create_secret(path: Path) -> str:
    """The embedded mode's secret: generated once into the data dir, readable by us only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        # "x": of two processes starting at once, exactly one writes; the other reads.
        with open(path, "x", opener=lambda p, flags: os.open(p, flags, 0o600)) as handle:
            handle.write(secret)
        return secret
    except FileExistsError:
        return path.read_text().strip()
