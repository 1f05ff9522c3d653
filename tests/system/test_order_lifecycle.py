"""Issue 19 through real servers on every backend kind: a storm of buyers on a short
payment window, winners who pay, cancel or walk away, late buyers taking the units that
come back. At every moment pending + paid <= stock; at the end every unit is paid,
pending or remaining, and the database, the gate and the API agree."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from surge.backends.sql import create_engine
from surge.schema import orders, sales
from tests.backends import Backend
from tests.server import base_env, run_cli, serve
from tests.system.conftest import bearer

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

STOCK = 20
WINDOW = 2  # seconds to pay
STORM = 6.0  # seconds of buying


async def _held(engine: Any, sale_id: int) -> tuple[int, int, int]:
    """Units of pending and of paid orders, and the sale's remaining, in one snapshot."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.select(orders.c.status, sa.func.sum(orders.c.quantity))
                .where(orders.c.sale_id == sale_id)
                .group_by(orders.c.status)
            )
        ).all()
        remaining = (
            await conn.execute(sa.select(sales.c.remaining).where(sales.c.id == sale_id))
        ).scalar_one()
    units = {status: int(total) for status, total in rows}
    return units.get("pending", 0), units.get("paid", 0), int(remaining)


async def test_a_storm_with_payments_cancellations_and_expiries(
    backend: Backend, tmp_path: Path
) -> None:
    env = base_env(tmp_path, {**backend.env(), "SURGE_PAY_WINDOW": str(WINDOW)})
    run_cli(env, "db", "migrate")
    engine = create_engine(backend.database_url, pool_size=2)
    rng = random.Random(19)
    tally = {"paid": 0, "cancelled": 0, "walked": 0, "bought": 0}
    with serve(env, tmp_path, "--workers", "2" if backend.redis_url else "1") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            created = await client.post(
                "/sales",
                headers=bearer("root", admin=True),
                json={
                    "name": "lifecycle",
                    "stock": STOCK,
                    "starts_at": "2020-01-01T00:00:00Z",
                    "ends_at": "2100-01-01T00:00:00Z",
                },
            )
            sale_id = created.json()["id"]
            violations: list[tuple[int, int]] = []
            stop = time.monotonic() + STORM

            async def watch() -> None:
                while time.monotonic() < stop + WINDOW + 2:
                    pending, paid, _ = await _held(engine, sale_id)
                    if pending + paid > STOCK:
                        violations.append((pending, paid))
                    await asyncio.sleep(0.05)

            async def buyer(n: int) -> None:
                attempt = 0
                while time.monotonic() < stop:
                    attempt += 1
                    user = f"b{n}"
                    answer = await client.post(
                        f"/sales/{sale_id}/orders",
                        headers={**bearer(user), "Idempotency-Key": f"k{attempt}"},
                        json={"quantity": 1},
                    )
                    if answer.status_code != 201:
                        assert answer.status_code in (409, 503), answer.text
                        await asyncio.sleep(0.05)
                        continue
                    tally["bought"] += 1
                    order = answer.json()["id"]
                    choice = rng.random()
                    if choice < 0.5:
                        paid = await client.post(
                            f"/orders/{order}/pay",
                            headers={**bearer(user), "Idempotency-Key": "pay"},
                            json={"payment_ref": f"ref-{order}"},
                        )
                        assert paid.status_code == 200, paid.text
                        tally["paid"] += 1
                        return  # a buyer who paid is done
                    if choice < 0.7:
                        await asyncio.sleep(rng.random() * 0.5)
                        cancelled = await client.post(
                            f"/orders/{order}/cancel", headers=bearer(user)
                        )
                        assert cancelled.status_code == 200, cancelled.text
                        tally["cancelled"] += 1
                    else:
                        tally["walked"] += 1  # never pays: it expires

            await asyncio.gather(watch(), *(buyer(n) for n in range(60)))
            await asyncio.sleep(WINDOW + 1.5)  # the last walk-aways expire
            pending, paid, remaining = await _held(engine, sale_id)
            view = (await client.get(f"/sales/{sale_id}")).json()
            async with engine.connect() as conn:
                late = (
                    await conn.execute(
                        sa.select(orders.c.pay_by, orders.c.closed_at).where(
                            orders.c.sale_id == sale_id, orders.c.status == "expired"
                        )
                    )
                ).all()
    await engine.dispose()
    assert violations == []
    assert tally["walked"] > 0 and tally["cancelled"] > 0, tally
    assert pending == 0, "every unpaid order expired"
    # within about a second of its deadline (times are kept to the second)
    assert late and all(0 <= (closed - due).total_seconds() <= 2 for due, closed in late), late
    assert paid == tally["paid"] <= STOCK
    assert paid + remaining == STOCK  # every unit came back once: resold, or remaining
    assert view["remaining"] == remaining  # the gate agrees with the database
    # returned units were sold again: more purchases than there were units
    assert tally["bought"] > STOCK, tally


def test_a_pending_order_says_until_when_it_may_be_paid(tmp_path: Path) -> None:
    env = base_env(tmp_path, {"SURGE_DATABASE_URL": f"sqlite:///{tmp_path / 'surge.db'}"})
    run_cli(env, "db", "migrate")
    with serve(env, tmp_path) as server, server.client() as client:
        sale = client.post(
            "/sales",
            headers=bearer("root", admin=True),
            json={
                "name": "window",
                "stock": 1,
                "starts_at": "2020-01-01T00:00:00Z",
                "ends_at": "2100-01-01T00:00:00Z",
            },
        ).json()
        bought = client.post(
            f"/sales/{sale['id']}/orders",
            headers={**bearer("u"), "Idempotency-Key": "k"},
            json={"quantity": 1},
        ).json()
        created = datetime.fromisoformat(bought["created_at"])
        assert bought["status"] == "pending"
        assert datetime.fromisoformat(bought["pay_by"]) - created == timedelta(minutes=15)
        seen = client.get(f"/orders/{bought['id']}", headers=bearer("u")).json()
        assert seen == bought
        paid = client.post(
            f"/orders/{bought['id']}/pay",
            headers={**bearer("u"), "Idempotency-Key": "p"},
            json={"payment_ref": "r"},
        ).json()
        assert (paid["status"], paid["pay_by"]) == ("paid", bought["pay_by"])
        after = client.get(f"/orders/{bought['id']}", headers=bearer("u")).json()
        assert after["status"] == "paid" and "pay_by" not in after
