"""In-process App tests of the sale routes: the live stock feed, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from surge import db
from surge.app import App
from surge.auth import mint
from surge.backends.sql import create_engine
from surge.backends.sql_sales import SqlSales
from surge.config import Settings
from surge.ground.sales import NewSale
from surge.ground.web import Problem, Request, Response

pytestmark = pytest.mark.anyio
SECRET = "feed-test-secret-0123456789-0123456789"


async def _call(
    app: App, method: str, path: str, user: str, body: dict[str, object], **headers: str
) -> Response:
    match = app.router.match(path)
    assert match is not None
    route, params = match
    raw = {b"authorization": f"Bearer {mint(SECRET, user, admin=user == 'root')}".encode()}
    raw.update({k.replace("_", "-").encode(): v.encode() for k, v in headers.items()})
    request = Request(method, path, "", raw, json.dumps(body).encode(), "127.0.0.1", b"t")
    request.params = params
    try:
        result = route.methods[method](request)
        return result if isinstance(result, tuple) else await result  # type: ignore[misc]
    except Problem as problem:
        return problem.response()


@contextlib.asynccontextmanager
async def _app(tmp_path: Path, **settings: Any) -> AsyncIterator[App]:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    await asyncio.to_thread(db.migrate, url)
    app = App(Settings(database_url=url, jwt_secret=SECRET, data_dir=tmp_path, **settings))
    await app.start()
    try:
        yield app
    finally:
        await app.close()


async def _new_sale(app: App, stock: int) -> int:
    now = datetime.now(UTC)
    sale = await _call(
        app,
        "POST",
        "/sales",
        "root",
        {
            "name": "test",
            "stock": stock,
            "starts_at": (now - timedelta(minutes=1)).isoformat(),
            "ends_at": (now + timedelta(hours=1)).isoformat(),
        },
    )
    return int(json.loads(sale[2])["id"])


async def test_purchases_reach_the_sale_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _app(tmp_path) as app:
        sale_id = await _new_sale(app, stock=3)
        heard: list[dict[str, object]] = []
        publish = app.hub.publish

        async def listen(room: str, data: bytes) -> None:
            if room == f"sale:{sale_id}":
                heard.append(json.loads(data))
            await publish(room, data)

        monkeypatch.setattr(app.hub, "publish", listen)  # what the stock feed calls
        for user in ("a", "b", "c", "d"):
            await _call(
                app,
                "POST",
                f"/sales/{sale_id}/orders",
                user,
                {"quantity": 1},
                idempotency_key=f"k-{user}",
            )
        await asyncio.sleep(0.4)
        assert heard and heard[-1] == {"remaining": 0, "state": "sold_out"}
        assert len(heard) <= 2  # coalesced, not one message per purchase


async def test_a_hanging_commit_gives_503_and_the_stock_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _app(tmp_path, write_deadline_ms=200) as app:
        sale_id = await _new_sale(app, stock=2)

        async def hang(*_args: object, **_kwargs: object) -> None:
            await asyncio.sleep(30)

        monkeypatch.setattr(SqlSales, "purchase_many", hang)
        started = asyncio.get_running_loop().time()
        answer = await _call(
            app, "POST", f"/sales/{sale_id}/orders", "a", {"quantity": 1}, idempotency_key="k"
        )
        # the commit is given one more deadline to land, then the answer says its fate is
        # unknown (a retry with the same key replays it if it did land)
        assert answer[0] == 503
        assert b"same Idempotency-Key" in answer[2]
        assert asyncio.get_running_loop().time() - started < 1.5
        await asyncio.sleep(0.6)  # past the public view's cache
        view = await _call(app, "GET", f"/sales/{sale_id}", "a", {})
        assert json.loads(view[2])["remaining"] == 2  # the reservation was given back


async def test_a_failing_database_gives_503_not_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _app(tmp_path) as app:

        async def down(*_args: object, **_kwargs: object) -> None:
            raise sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))

        monkeypatch.setattr(SqlSales, "get_sale", down)
        bought = await _call(
            app, "POST", "/sales/1/orders", "a", {"quantity": 1}, idempotency_key="k"
        )
        viewed = await _call(app, "GET", "/sales/1", "a", {})
        for answer in (bought, viewed):
            assert answer[0] == 503
            assert b"retry-after: 1" in answer[1]


async def test_a_new_order_is_found_even_if_its_id_was_asked_for_before(tmp_path: Path) -> None:
    async with _app(tmp_path) as app:
        sale_id = await _new_sale(app, stock=1)
        early = await _call(app, "GET", "/orders/1", "a", {})
        assert early[0] == 404  # and now cached as absent
        bought = await _call(
            app, "POST", f"/sales/{sale_id}/orders", "a", {"quantity": 1}, idempotency_key="k"
        )
        assert bought[0] == 201 and json.loads(bought[2])["id"] == 1
        await asyncio.sleep(0.05)  # the purchase tells the order query in the background
        found = await _call(app, "GET", "/orders/1", "a", {})
        assert found[0] == 200 and found[2] == bought[2]


async def test_buyers_finding_no_gate_rebuild_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = 0
    original = SqlSales.gate_state

    async def counted(self: SqlSales, sale_id: int) -> Any:
        nonlocal loads
        loads += 1
        return await original(self, sale_id)

    monkeypatch.setattr(SqlSales, "gate_state", counted)
    async with _app(tmp_path) as app:
        engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}", 1)
        now = datetime.now(UTC)
        new = NewSale("no gate yet", 5, 1, now - timedelta(minutes=1), now + timedelta(hours=1))
        sale = await SqlSales(engine).create_sale(new, now)  # behind Surge's back: no gate
        await engine.dispose()
        answers = await asyncio.gather(
            *(
                _call(
                    app,
                    "POST",
                    f"/sales/{sale.id}/orders",
                    f"u{i}",
                    {"quantity": 1},
                    idempotency_key=f"k{i}",
                )
                for i in range(40)
            )
        )
        assert sorted(status for status, *_ in answers).count(201) == 5
        assert loads == 1
