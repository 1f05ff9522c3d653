from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from surge.ground.sales import (
    Sale,
    fingerprint,
    parse_idempotency_key,
    parse_new_sale,
    parse_quantity,
)
from surge.ground.web import Problem

GOOD = (
    b'{"name":"Phones","stock":100,"starts_at":"2026-01-01T00:00:00Z",'
    b'"ends_at":"2026-01-02T00:00:00+02:00"}'
)


def test_a_valid_sale() -> None:
    new = parse_new_sale(GOOD)
    assert (new.name, new.stock, new.per_user_limit) == ("Phones", 100, 1)
    assert new.starts_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert new.ends_at == datetime(2026, 1, 1, 22, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (
            b'{"stock":1,"starts_at":"2026-01-01T00:00:00Z","ends_at":"2026-01-02T00:00:00Z"}',
            422,
            "name is required",
        ),
        (GOOD.replace(b'"stock":100', b'"stock":0'), 422, "stock must be between"),
        (GOOD.replace(b'"stock":100', b'"stock":"100"'), 422, "stock must be an integer"),
        (GOOD.replace(b'"stock":100', b'"stock":true'), 422, "stock must be an integer"),
        (GOOD.replace(b'"stock":100', b'"stock":1e3'), 422, "stock must be an integer"),
        (GOOD.replace(b'"stock":100', b'"stock":99999999999999999999'), 422, "stock"),
        (GOOD.replace(b'"name":"Phones"', b'"name":"   "'), 422, "name must be"),
        (GOOD.replace(b'"name":"Phones"', b'"name":"' + b"x" * 201 + b'"'), 422, "name must be"),
        (GOOD.replace(b"2026-01-01T00:00:00Z", b"2026-01-01T00:00:00"), 422, "time zone"),
        (GOOD.replace(b"2026-01-01T00:00:00Z", b"yesterday"), 422, "RFC 3339"),
        (GOOD.replace(b"2026-01-01T00:00:00Z", b"0001-01-01T00:00:00+05:00"), 422, "out of range"),
        (
            GOOD.replace(b"2026-01-02T00:00:00+02:00", b"9999-12-31T23:59:59-05:00"),
            422,
            "out of range",
        ),
        (GOOD.replace(b"2026-01-01T00:00:00Z", b"2026-01-03T00:00:00Z"), 422, "after starts_at"),
        (GOOD.replace(b"}", b',"per_user_limit":0}'), 422, "per_user_limit"),
        (GOOD.replace(b"}", b',"extra":1}'), 422, "unknown fields: extra"),
    ],
)
def test_invalid_sales(body: bytes, status: int, fragment: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_new_sale(body)
    assert caught.value.status == status
    assert fragment in caught.value.detail


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"quantity":1}', 0),
        (b'{"quantity":1000}', 0),
        (b'{"quantity":0}', 422),
        (b'{"quantity":-1}', 422),
        (b'{"quantity":1001}', 422),
        (b'{"quantity":10000000000000000000000}', 422),
        (b'{"quantity":"1"}', 422),
        (b'{"quantity":1.0}', 422),
        (b'{"quantity":null}', 422),
        (b'{"quantity":true}', 422),
        (b"{}", 422),
        (b'{"quantity":1,"x":2}', 422),
        (b"", 400),
        (b"{", 400),
        (b'"1"', 400),
    ],
)
def test_quantities(body: bytes, status: int) -> None:
    if status == 0:
        assert parse_quantity(body) >= 1
        return
    with pytest.raises(Problem) as caught:
        parse_quantity(body)
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (b"abc-123", True),
        (b"k" * 64, True),
        (None, False),
        (b"", False),
        (b"k" * 65, False),
        (b"a\x00b", False),
        (b"caf\xc3\xa9", False),
        (b"a|b", False),
    ],
)
def test_idempotency_keys(header: bytes | None, ok: bool) -> None:
    if ok:
        assert parse_idempotency_key(header) == (header or b"").decode()
        return
    with pytest.raises(Problem) as caught:
        parse_idempotency_key(header)
    assert caught.value.status == 400


def test_states() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    sale = Sale(1, "s", 10, 5, 1, now, now + timedelta(hours=1))
    assert sale.state(now - timedelta(seconds=1)) == "upcoming"
    assert sale.state(now) == "live"
    assert sale.state(now, remaining=0) == "sold_out"
    assert sale.state(now + timedelta(hours=1)) == "ended"
    assert sale.to_json(now)["starts_at"] == "2026-06-01T00:00:00Z"


def test_fingerprints_tell_requests_apart() -> None:
    assert fingerprint(1, 1) == fingerprint(1, 1)
    assert len({fingerprint(1, 1), fingerprint(1, 2), fingerprint(2, 1)}) == 3


def test_remembered_bodies_answer_as_parsed_ones() -> None:
    for _ in range(3):  # parsed, then remembered
        assert parse_quantity(b'{"quantity":3}') == 3
        with pytest.raises(Problem) as bad:
            parse_quantity(b'{"quantity":0}')  # refusals are never remembered
        assert bad.value.kind == "invalid-purchase"
    padded = b'{"quantity": 2' + b" " * 100 + b"}"
    assert parse_quantity(padded) == 2  # long bodies parsed every time


def test_live_at_agrees_with_live() -> None:
    now = datetime.now(UTC)
    sale = Sale(1, "s", 1, 1, 1, now - timedelta(seconds=10), now + timedelta(seconds=10))
    for offset in (-20, -10, 0, 9.9, 10, 20):
        moment = now + timedelta(seconds=offset)
        assert sale.live_at(moment.timestamp()) == sale.live(moment)
