"""Bearer tokens: HS256 JWTs whose `sub` is the user id and `role` may be `admin`, or
`service` (an application's backend: it may publish into rooms, POST /rooms/{room}/messages,
and nothing an admin may do besides).

Verifying a JWT costs a few microseconds (base64, JSON, HMAC: surge.tokens); the same
token arrives on every request of a session, so verified tokens are remembered by their
exact bytes until they expire. Refusals are remembered too, apart (a flood of bad tokens
must not push the good ones out): a token that failed verification for its signature,
format or expiry can never pass it later, so a flood of bad tokens costs a dict lookup
each, not an HMAC. A token not valid *yet* (`nbf`/`iat` ahead of our clock, past the
leeway) is not remembered: it will be.

Both caches are bounded in entries and in bytes (the header bytes are the key), and a
header longer than MAX_TOKEN_BYTES is refused unread: what a client sends cannot make
the process hold more than `cache_bytes` for tokens. A cached refusal is kept as two
strings, never as the raised exception (whose traceback would hold the request, its
connection and its read buffer alive).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from surge import tokens
from surge.ground.evict import evict_oldest
from surge.ground.web import Problem

# Far above a token of ours (about 200 bytes) or a typical identity provider's (1-2 KB).
MAX_TOKEN_BYTES = 4096
_ENTRY_BYTES = 200  # what a cache entry costs besides its key (dict slot, value)
_CHALLENGE = (("www-authenticate", 'Bearer realm="surge"'),)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    admin: bool
    expires: float  # its token's exp plus the leeway
    service: bool = False  # role `service`: publishes into rooms from a backend


V = TypeVar("V")


class _Cache(Generic[V]):
    """Insertion-ordered, bounded in entries and bytes; the oldest go first."""

    __slots__ = ("_bytes", "_max_bytes", "_max_entries", "entries")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.entries: dict[bytes, V] = {}
        self._bytes = 0
        self._max_entries = max(1, max_entries)
        self._max_bytes = max_bytes

    def put(self, key: bytes, value: V) -> None:
        entries = self.entries
        if key in entries:
            return
        cost = len(key) + _ENTRY_BYTES
        while entries and (
            len(entries) >= self._max_entries or self._bytes + cost > self._max_bytes
        ):
            for oldest in evict_oldest(entries, self._max_entries):
                self._bytes -= len(oldest) + _ENTRY_BYTES
        entries[key] = value
        self._bytes += cost

    @property
    def size_bytes(self) -> int:
        return self._bytes


class _Refused(Exception):
    def __init__(self, kind: str, detail: str, lasting: bool = True) -> None:
        self.kind, self.detail, self.lasting = kind, detail, lasting


class Authenticator:
    def __init__(
        self,
        secret: str,
        cache_size: int = 100_000,
        cache_bytes: int = 32 * 1024 * 1024,
        leeway: float = 0.0,
    ) -> None:
        self._key = secret.encode()
        self._leeway = leeway
        self._users: _Cache[User] = _Cache(cache_size, cache_bytes)
        # refusals get an eighth: enough to make a repeated bad token cheap, too little
        # for a flood of distinct ones to matter
        self._refusals: _Cache[tuple[str, str]] = _Cache(cache_size // 8, cache_bytes // 8)

    def user(self, header: bytes | None) -> User:
        """The caller of a request, from its Authorization header; 401 problem otherwise."""
        if header is None:
            raise Problem(401, "unauthorized", "missing bearer token", _CHALLENGE)
        known = self._users.entries.get(header)
        if known is not None and known.expires > time.time():
            return known
        refused = self._refusals.entries.get(header)
        if refused is not None:
            kind, detail = refused
            raise Problem(401, kind, detail, _CHALLENGE)
        if len(header) > MAX_TOKEN_BYTES:
            raise Problem(401, "unauthorized", "token too long", _CHALLENGE)
        try:
            user = self._verify(header)
        except _Refused as refusal:
            if refusal.lasting:
                self._refusals.put(header, (refusal.kind, refusal.detail))
            raise Problem(401, refusal.kind, refusal.detail, _CHALLENGE) from None
        self._users.put(header, user)
        return user

    @property
    def cache_bytes(self) -> int:
        return self._users.size_bytes + self._refusals.size_bytes

    def _verify(self, header: bytes) -> User:
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise _Refused("unauthorized", "expected 'Authorization: Bearer <token>'")
        try:
            claims = tokens.verify(token, self._key, self._leeway)
        except tokens.Refused as refused:
            if refused.kind == "expired":
                raise _Refused("token-expired", "token has expired") from None
            if refused.kind == "not-yet-valid":
                raise _Refused("unauthorized", "token not valid yet", lasting=False) from None
            raise _Refused("unauthorized", "invalid token") from None
        sub = claims["sub"]
        # printable: a user id is stored, logged and echoed (no NUL, line breaks or bidi
        # controls, which PostgreSQL refuses or a log reader would be fooled by)
        if not isinstance(sub, str) or not 0 < len(sub) <= 64 or not sub.isprintable():
            raise _Refused("unauthorized", "token subject must be 1-64 printable characters")
        role = claims.get("role")
        expires = float(claims["exp"]) + self._leeway
        return User(sub, role == "admin", expires, role == "service")


def mint(
    secret: str, user_id: str, admin: bool = False, ttl: float = 86_400.0, role: str = ""
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + int(ttl)}
    if admin or role:
        claims["role"] = "admin" if admin else role
    return tokens.mint(secret.encode(), claims)


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
