"""surge.tokens against PyJWT as the oracle: it never accepts what PyJWT refuses, and
accepts (with the same claims) what PyJWT accepts among well-formed tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surge import tokens

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOW = time.time()
FAR = 10_000  # seconds: far from every boundary, so PyJWT's clock and ours agree

subjects = st.text(min_size=1, max_size=64)
extras = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(
        lambda k: k not in {"sub", "exp", "iat", "nbf", "aud", "jti", "iss"}
    ),
    # 64-bit: orjson refuses larger integers (such a token is refused: stricter than PyJWT)
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.booleans(), st.none()),
    max_size=3,
)


@st.composite
def valid_claims(draw: st.DrawFn) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "sub": draw(subjects),
        "exp": int(NOW) + draw(st.integers(FAR, 10 * FAR)),
    }
    if draw(st.booleans()):
        claims["iat"] = int(NOW) - draw(st.integers(FAR, 10 * FAR))
    if draw(st.booleans()):
        claims["nbf"] = int(NOW) - draw(st.integers(FAR, 10 * FAR))
    if draw(st.booleans()):
        claims["role"] = "admin"
    if draw(st.booleans()):
        claims["jti"] = draw(st.text(max_size=10))
    claims.update(draw(extras))
    return claims


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _signed(header: dict[str, Any], claims: Any, key: bytes = KEY) -> bytes:
    signing_input = _b64(orjson.dumps(header)) + b"." + _b64(orjson.dumps(claims))
    return signing_input + b"." + _b64(hmac.new(key, signing_input, hashlib.sha256).digest())


def _pyjwt(token: bytes) -> dict[str, Any] | None:
    try:
        return jwt.decode(token, KEY, algorithms=["HS256"], options={"require": ["sub", "exp"]})
    except jwt.PyJWTError:
        return None


def _ours(token: bytes) -> dict[str, Any] | None:
    try:
        return tokens.verify(token, KEY, now=NOW)
    except tokens.Refused:
        return None


@given(valid_claims())
def test_tokens_we_mint_pyjwt_accepts_and_so_do_we(claims: dict[str, Any]) -> None:
    token = tokens.mint(KEY, claims).encode()
    assert _pyjwt(token) == claims
    assert _ours(token) == claims


@given(valid_claims())
def test_tokens_pyjwt_mints_we_accept(claims: dict[str, Any]) -> None:
    token = jwt.encode(claims, KEY, algorithm="HS256").encode()
    assert _ours(token) == claims


@given(valid_claims(), st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_a_tampered_token_is_never_accepted_unless_pyjwt_accepts_it_too(
    claims: dict[str, Any], data: st.DataObject
) -> None:
    token = bytearray(tokens.mint(KEY, claims).encode())
    where = data.draw(st.integers(0, len(token) - 1))
    token[where] = data.draw(st.integers(0, 255).filter(lambda b: b != token[where]))
    ours = _ours(bytes(token))
    if ours is not None:  # only a change base64 decoding ignores (the last bits)
        assert _pyjwt(bytes(token)) == ours == claims


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_accepted_only_as_pyjwt_would(token: bytes) -> None:
    ours = _ours(token)
    if ours is not None:
        assert _pyjwt(token) == ours


@given(st.lists(st.sampled_from([b"a", b"B", b"-", b"_", b".", b"=", b"e30", b"eyJ"]), max_size=40))
def test_token_shaped_noise_is_refused_as_malformed(pieces: list[bytes]) -> None:
    token = b"".join(pieces)
    assert _ours(token) is None or _pyjwt(token) is not None


@given(valid_claims())
def test_another_key_is_refused(claims: dict[str, Any]) -> None:
    with pytest.raises(tokens.Refused) as refused:
        tokens.verify(tokens.mint(OTHER_KEY, claims).encode(), KEY, now=NOW)
    assert refused.value.kind == "invalid"


@given(valid_claims(), st.integers(1, 10 * FAR))
def test_expired_means_expired_for_both(claims: dict[str, Any], ago: int) -> None:
    claims = {**claims, "exp": int(NOW) - FAR - ago}
    token = tokens.mint(KEY, claims).encode()
    with pytest.raises(tokens.Refused) as refused:
        tokens.verify(token, KEY, now=NOW)
    assert refused.value.kind == "expired"
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, KEY, algorithms=["HS256"])


@given(valid_claims(), st.sampled_from(["nbf", "iat"]), st.integers(1, 10 * FAR))
def test_not_yet_valid_means_it_for_both(claims: dict[str, Any], claim: str, ahead: int) -> None:
    claims = {**claims, claim: int(NOW) + FAR + ahead}
    token = tokens.mint(KEY, claims).encode()
    with pytest.raises(tokens.Refused) as refused:
        tokens.verify(token, KEY, now=NOW)
    assert refused.value.kind == "not-yet-valid"
    with pytest.raises(jwt.ImmatureSignatureError):
        jwt.decode(token, KEY, algorithms=["HS256"])


@pytest.mark.parametrize("typ", ["JWT", "jwt", "at+jwt", "application/jwt"])
def test_jwt_types_are_understood_whatever_their_case(typ: str) -> None:
    token = _signed({"alg": "HS256", "typ": typ, "kid": "k1"}, {"sub": "u", "exp": int(NOW) + FAR})
    assert tokens.verify(token, KEY, now=NOW)["sub"] == "u"


def test_the_leeway_stretches_both_ends() -> None:
    expired = tokens.mint(KEY, {"sub": "u", "exp": int(NOW) - 20}).encode()
    assert tokens.verify(expired, KEY, leeway=30, now=NOW)["sub"] == "u"
    with pytest.raises(tokens.Refused):
        tokens.verify(expired, KEY, leeway=10, now=NOW)
    early = tokens.mint(KEY, {"sub": "u", "exp": int(NOW) + 60, "nbf": int(NOW) + 20})
    assert tokens.verify(early.encode(), KEY, leeway=30, now=NOW)["sub"] == "u"


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "typ": "JWT"},
        {"alg": "HS512", "typ": "JWT"},
        {"alg": "RS256", "typ": "JWT"},
        {"alg": "hs256"},
        {"typ": "JWT"},
        {"alg": "HS256", "typ": "JWE"},
        {"alg": "HS256", "typ": None},
        {"alg": "HS256", "crit": ["exp"]},
        {"alg": "HS256", "b64": False},
        {"alg": "HS256", "kid": 5},
    ],
)
def test_only_hs256_is_understood(header: dict[str, Any]) -> None:
    token = _signed(header, {"sub": "u", "exp": int(NOW) + FAR})
    with pytest.raises(tokens.Refused) as refused:
        tokens.verify(token, KEY, now=NOW)
    assert refused.value.kind == "invalid"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": int(NOW) + FAR},  # no subject
        {"sub": 7, "exp": int(NOW) + FAR},
        {"sub": "u"},  # no expiry
        {"sub": "u", "exp": "tomorrow"},
        {"sub": "u", "exp": True},
        {"sub": "u", "exp": int(NOW) + FAR, "iat": "now"},
        {"sub": "u", "exp": int(NOW) + FAR, "iat": None},
        {"sub": "u", "exp": int(NOW) + FAR, "nbf": None},
        {"sub": "u", "exp": None},
        {"sub": "u", "exp": int(NOW) + FAR, "aud": "someone-else"},
        {"sub": "u", "exp": int(NOW) + FAR, "jti": 5},
        ["sub", "u"],  # not an object
        "just a string",
    ],
)
def test_claims_of_the_wrong_shape_are_refused_like_pyjwt(claims: Any) -> None:
    token = _signed({"alg": "HS256", "typ": "JWT"}, claims)
    with pytest.raises(tokens.Refused):
        tokens.verify(token, KEY, now=NOW)
    assert _pyjwt(token) is None


@pytest.mark.parametrize(
    "token",
    [
        b"",
        b"a.b",
        b"a.b.c.d",
        b"..",
        b"e30.e30.",  # no signature
        b"e30=.e30.AAAA",  # padding
        b"e30.e30.AA AA",
        b"e30.e30.A",  # a length base64 cannot have
    ],
)
def test_malformed_tokens_are_refused(token: bytes) -> None:
    with pytest.raises(tokens.Refused) as refused:
        tokens.verify(token, KEY, now=NOW)
    assert refused.value.kind == "invalid"
