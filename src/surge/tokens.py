"""HS256 JSON Web Tokens (RFC 7519, the one algorithm Surge uses): verify and mint.

Written here rather than through PyJWT's `decode` because a cold process verifies one
token per user, and PyJWT's generic path (algorithm registry, options merging, header
and claim validation for every algorithm, `datetime` for the clock) cost about 21 % of a
cache miss's CPU. This does only what an HS256 token needs, in this order, refusing
anything it does not understand:

1. three base64url segments (no padding, no other characters);
2. the header is a JSON object whose `alg` is exactly "HS256" (`typ`, if present, a JWT
   type; `kid`, if present, a string), with no `crit` or `b64` (we implement no
   extension), read before the signature is checked so a token of another algorithm
   (`none`, RS256) is never even compared;
3. the signature, HMAC-SHA256 of `header.payload` with the secret, compared in constant
   time (`hmac.compare_digest`);
4. the claims, a JSON object: `sub` a string, `exp` a number (not a bool; whole
   seconds), `iat` and `nbf` numbers when present (not null), `aud` absent (no audience
   is expected, so a token meant for another one is refused), `jti` a string when
   present; `exp <= now - leeway` is expired, `nbf` or `iat` > now + leeway not valid
   yet.

PyJWT stays as the oracle of tests/unit/test_tokens.py: property tests over valid,
tampered, expired and malformed tokens check this never accepts what PyJWT refuses and
accepts what it accepts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from typing import Any

import orjson

ALGORITHM = "HS256"
_SEGMENT = re.compile(rb"[A-Za-z0-9_-]+\Z")
# `typ` values meaning a JWT (RFC 7519 5.1, RFC 9068), compared case-insensitively
_TYPES = frozenset(("jwt", "at+jwt", "application/jwt", "application/at+jwt"))
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")


class Refused(Exception):
    """The token is not accepted; `kind`: "invalid", "expired" or "not-yet-valid"."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _segment(data: bytes) -> bytes:
    if not _SEGMENT.match(data) or len(data) % 4 == 1:
        raise Refused("invalid", "malformed token")
    try:
        return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        raise Refused("invalid", "malformed token") from None


def _object(data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Refused("invalid", "malformed token") from None
    if not isinstance(value, dict):
        raise Refused("invalid", "malformed token")
    return value


def _seconds(claims: dict[str, Any], name: str) -> int | None:
    """A NumericDate claim, in whole seconds (truncated, as PyJWT does); None when absent
    (present but null is refused, as PyJWT does)."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refused("invalid", f"claim {name} must be a number")
    return int(value)


def verify(
    token: bytes, key: bytes, leeway: float = 0.0, now: float | None = None
) -> dict[str, Any]:
    """The claims of a valid token signed with `key`; `Refused` otherwise."""
    parts = token.split(b".")
    if len(parts) != 3 or not parts[2]:
        raise Refused("invalid", "malformed token")
    header_b64, payload_b64, signature_b64 = parts
    header = _object(_segment(header_b64))
    if header.get("alg") != ALGORITHM or "crit" in header or "b64" in header:
        raise Refused("invalid", "unsupported token algorithm")
    typ = header.get("typ", "JWT")
    if not isinstance(typ, str) or typ.lower() not in _TYPES:
        raise Refused("invalid", "unsupported token type")
    if "kid" in header and not isinstance(header["kid"], str):
        raise Refused("invalid", "malformed token")
    expected = hmac.new(key, header_b64 + b"." + payload_b64, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _segment(signature_b64)):
        raise Refused("invalid", "bad signature")
    claims = _object(_segment(payload_b64))
    if not isinstance(claims.get("sub"), str):
        raise Refused("invalid", "claim sub must be a string")
    if "aud" in claims:
        raise Refused("invalid", "token meant for an audience")
    if "jti" in claims and not isinstance(claims["jti"], str):
        raise Refused("invalid", "claim jti must be a string")
    expires = _seconds(claims, "exp")
    if expires is None:
        raise Refused("invalid", "claim exp is required")
    not_before = _seconds(claims, "nbf")
    issued = _seconds(claims, "iat")
    clock = time.time() if now is None else now
    if expires <= clock - leeway:
        raise Refused("expired", "token has expired")
    if (not_before is not None and not_before > clock + leeway) or (
        issued is not None and issued > clock + leeway
    ):
        raise Refused("not-yet-valid", "token not valid yet")
    return claims


def mint(key: bytes, claims: dict[str, Any]) -> str:
    """A token of `claims`, signed with `key`."""
    payload = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=")
    signing_input = _HEADER + b"." + payload
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
