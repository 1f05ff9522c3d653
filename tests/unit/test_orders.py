"""The order query's rules, on the in-memory backends with a controllable store."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import pytest

from surge.auth import Authenticator, mint
from surge.backends.memory import MemoryBus, MemoryCache
from surge.ground.orders import Order
from surge.ground.web import Problem, Request, Response, response
from surge.orders import (
    NearCache,
    OrderQuery,
    OrderQueryOptions,
    OrderStats,
    encode_order,
    parse_id,
)

SECRET = "orders-unit-secret-0123456789-0123456789"
WHEN = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


class FakeStore:
    """Counts queries; can be slowed down or broken."""

    def __init__(self, orders: dict[int, Order], delay: float = 0.0) -> None:
        self.orders = orders
        self.delay = delay
        self.queries: list[list[int]] = []
        self.failing = False
        self.size = 4
        self.in_use = 0

    async def get_orders(self, ids: Sequence[int]) -> dict[int, Order]:
        self.queries.append(list(ids))
        await asyncio.sleep(self.delay)
        if self.failing:
            raise ConnectionError("database down")
        return {i: self.orders[i] for i in ids if i in self.orders}

    def changed(self, ids: Sequence[int]) -> None:
        self.written = [*getattr(self, "written", []), *ids]

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def _order(order_id: int, user: str) -> Order:
    return Order(order_id, 1, user, 2, "confirmed", WHEN)


def _request(order_id: str, user: str | None = "alice", admin: bool = False) -> Request:
    headers = {}
    if user is not None:
        headers[b"authorization"] = f"Bearer {mint(SECRET, user, admin=admin)}".encode()
    request = Request("GET", f"/orders/{order_id}", "", headers, b"", "127.0.0.1", b"rid")
    request.params = {"id": order_id}
    return request


async def _make(store: FakeStore, **overrides: float) -> tuple[OrderQuery, OrderStats]:
    stats = OrderStats()
    query = OrderQuery(
        OrderQueryOptions(**overrides),
        Authenticator(SECRET),
        MemoryCache(),
        store,
        MemoryBus(),
        stats,
    )
    await query.start()
    return query, stats


async def _call(query: OrderQuery, request: Request) -> Response:
    result = query.handle(request)
    if isinstance(result, tuple):
        return result
    return await result


def _json(response: Response) -> dict[str, object]:
    return orjson.loads(response[2])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "-1",
        "0",
        "00",
        "1.5",
        "1e3",
        "",
        " 1",
        "+1",
        "12345678901234567890",
        "9" * 400,
        "\u0661",
        "\u2460",
        "9223372036854775808",
        "0x10",
    ],
)
def test_bad_ids_are_400(text: str) -> None:
    with pytest.raises(Problem) as caught:
        parse_id(text)
    assert caught.value.status == 400


def test_good_ids() -> None:
    assert parse_id("1") == 1
    assert parse_id("007") == 7
    assert parse_id("9223372036854775807") == 2**63 - 1


def test_near_cache_is_bounded_and_expires() -> None:
    near = NearCache(max_entries=3, ttl=60)
    for key in range(5):
        near.put(key, "u", (200, b"", b""), 60)
    assert (
        len(near) == 3
        and near.get(0, time.monotonic()) is None
        and near.get(4, time.monotonic()) is not None
    )
    near.put(9, "u", (200, b"", b""), 0)
    assert near.get(9, time.monotonic()) is None


def test_a_cached_order_costs_its_size_not_the_encoders_buffer() -> None:
    """orjson hands back its whole write buffer (4 KB in 3.13) as the bytes object; a
    near cache of 100,000 orders held 450 MB before the encoding was copied to size."""
    near = NearCache(max_entries=10_000, ttl=60)
    count = 2_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for order_id in range(count):
            order = Order(order_id, 1, f"user-{order_id}", 2, "confirmed", WHEN)
            near.put(order_id, order.user_id, response(200, encode_order(order)), 60)
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    body = near.data[7][1][2]
    assert orjson.loads(body)["user_id"] == "user-7"
    assert per_entry < 1_000, f"{per_entry:.0f} bytes per near-cache entry"


@pytest.mark.anyio
async def test_ids_missed_while_every_connection_is_busy_share_the_next_query() -> None:
    store = FakeStore({i: _order(i, "alice") for i in range(1, 6)}, delay=0.05)
    store.size = 1
    query, stats = await _make(store, deadline=1.0)
    first = asyncio.ensure_future(_call(query, _request("1")))
    await asyncio.sleep(0.01)  # the only connection is busy with id 1 from now on
    later = []
    for order_id in "2345":  # one id per event-loop turn: four batches before
        later.append(asyncio.ensure_future(_call(query, _request(order_id))))
        await asyncio.sleep(0.001)
    answers = await asyncio.gather(first, *later)
    assert [_json(answer)["id"] for answer in answers] == [1, 2, 3, 4, 5]
    assert store.queries == [[1], [2, 3, 4, 5]]
    assert stats.db_queries == 2 and stats.db_rows == 5
    await query.close()


class SlowCache(MemoryCache):
    """Records every read; each takes `delay` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.reads: list[list[str]] = []

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.reads.append(list(keys))
        await asyncio.sleep(self.delay)
        return await super().get_many(keys)


async def _one_read_at_a_time(cache: SlowCache, deadline: float) -> OrderQuery:
    """An order query on `cache` with one shared-cache read in flight at most, so a test
    needs only one in flight to see what waits."""
    store = FakeStore({i: _order(i, "alice") for i in range(1, 6)})
    query = OrderQuery(
        OrderQueryOptions(deadline=deadline),
        Authenticator(SECRET),
        cache,
        store,
        MemoryBus(),
        OrderStats(),
    )
    await query.start()
    query._cache_reads = 1
    return query


@pytest.mark.anyio
async def test_ids_missed_while_the_shared_cache_reads_share_the_next_read() -> None:
    cache = SlowCache(delay=0.05)
    query = await _one_read_at_a_time(cache, deadline=1.0)
    first = asyncio.ensure_future(_call(query, _request("1")))
    await asyncio.sleep(0.01)
    later = []
    for order_id in "2345":  # one id per event-loop turn
        later.append(asyncio.ensure_future(_call(query, _request(order_id))))
        await asyncio.sleep(0.001)
    answers = await asyncio.gather(first, *later)
    assert [_json(answer)["id"] for answer in answers] == [1, 2, 3, 4, 5]
    assert cache.reads == [["order:1"], ["order:2", "order:3", "order:4", "order:5"]]
    await query.close()


@pytest.mark.anyio
async def test_ids_everyone_gave_up_on_are_not_read() -> None:
    cache = SlowCache(delay=0.2)
    query = await _one_read_at_a_time(cache, deadline=0.05)
    first = asyncio.ensure_future(_call(query, _request("1")))
    await asyncio.sleep(0.01)
    gone = [asyncio.ensure_future(_call(query, _request(order_id))) for order_id in "23"]
    await asyncio.sleep(0.1)  # 2 and 3 are answered 504 while the read of 1 runs
    assert [answer[0] for answer in await asyncio.gather(*gone)] == [504, 504]
    query._deadline = 1.0
    last = asyncio.ensure_future(_call(query, _request("4")))
    await first
    await asyncio.sleep(0.3)
    assert _json(await last)["id"] == 4
    assert cache.reads == [["order:1"], ["order:4"]]
    await query.close()


@pytest.mark.anyio
async def test_closing_answers_every_waiter_at_once() -> None:
    query = await _one_read_at_a_time(SlowCache(delay=5.0), deadline=10.0)
    reading = asyncio.ensure_future(_call(query, _request("1")))  # its read never ends
    await asyncio.sleep(0.01)
    queued = asyncio.ensure_future(_call(query, _request("2")))  # waits for that read
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await query.close()
    answers = await asyncio.wait_for(asyncio.gather(reading, queued), 1.0)
    assert [answer[0] for answer in answers] == [503, 503]
    assert time.monotonic() - started < 1.0 and not query._flights


@pytest.mark.anyio
async def test_owner_admin_and_stranger() -> None:
    store = FakeStore({1: _order(1, "alice")})
    query, stats = await _make(store)
    owner = await _call(query, _request("1", "alice"))
    assert owner[0] == 200
    assert _json(owner) == {
        "id": 1,
        "sale_id": 1,
        "user_id": "alice",
        "quantity": 2,
        "status": "confirmed",
        "created_at": "2026-11-27T12:00:00Z",
    }
    assert (await _call(query, _request("1", "root", admin=True)))[0] == 200
    stranger = await _call(query, _request("1", "mallory"))
    assert stranger[0] == 404
    missing = await _call(query, _request("2", "alice"))
    assert stranger[2] == missing[2]  # someone else's order looks exactly like a missing one
    assert len(store.queries) == 2  # id 1 once (then near cache), id 2 once
    assert stats.cache_hits["near"] == 2


@pytest.mark.anyio
async def test_near_cache_hit_answers_synchronously() -> None:
    query, _ = await _make(FakeStore({1: _order(1, "alice")}))
    await _call(query, _request("1"))
    assert isinstance(query.handle(_request("1")), tuple)  # no future, no task


@pytest.mark.anyio
async def test_auth_is_checked_before_the_id() -> None:
    query, _ = await _make(FakeStore({}))
    with pytest.raises(Problem) as caught:
        query.handle(_request("abc", user=None))
    assert caught.value.status == 401


@pytest.mark.anyio
async def test_single_flight_one_query_for_a_stampede() -> None:
    store = FakeStore({7: _order(7, "alice")}, delay=0.02)
    query, stats = await _make(store, deadline=2.0)
    responses = await asyncio.gather(*(_call(query, _request("7")) for _ in range(1000)))
    assert {r[0] for r in responses} == {200}
    assert store.queries == [[7]]
    assert stats.db_queries == 1


@pytest.mark.anyio
async def test_misses_of_one_loop_turn_share_one_query() -> None:
    store = FakeStore({i: _order(i, "alice") for i in range(1, 51)})
    query, _ = await _make(store, deadline=2.0)
    responses = await asyncio.gather(*(_call(query, _request(str(i))) for i in range(1, 51)))
    assert all(r[0] == 200 for r in responses)
    assert len(store.queries) == 1 and sorted(store.queries[0]) == list(range(1, 51))


@pytest.mark.anyio
async def test_deadline_gives_504_and_work_of_abandoned_ids_is_skipped() -> None:
    store = FakeStore({i: _order(i, "alice") for i in range(1, 20)}, delay=0.3)
    store.size = 1  # one query at a time: the second batch must wait for the first
    query, stats = await _make(store, deadline=0.05)
    first = asyncio.ensure_future(_call(query, _request("1")))
    await asyncio.sleep(0.01)  # id 1's query is running now
    second = asyncio.ensure_future(_call(query, _request("2")))
    assert (await first)[0] == 504
    assert (await second)[0] == 504
    assert stats.deadline_exceeded == 2
    await asyncio.sleep(0.4)
    # id 1's running query completed and filled the cache; id 2's never started
    assert store.queries == [[1]]
    assert isinstance(query.handle(_request("1")), tuple)


@pytest.mark.anyio
async def test_negative_results_are_cached() -> None:
    store = FakeStore({})
    query, _ = await _make(store, negative_ttl=30)
    for _ in range(5):
        assert (await _call(query, _request("404")))[0] == 404
    assert store.queries == [[404]]


@pytest.mark.anyio
async def test_database_failure_is_503_not_500() -> None:
    store = FakeStore({})
    store.failing = True
    query, _ = await _make(store)
    response = await _call(query, _request("3"))
    assert response[0] == 503
    assert b"retry-after: 1" in response[1]
    store.failing = False
    assert (await _call(query, _request("3")))[0] == 404  # failures are not cached


@pytest.mark.anyio
async def test_shared_cache_serves_other_processes_and_invalidation_reaches_them() -> None:
    store = FakeStore({5: _order(5, "alice")})
    cache, bus = MemoryCache(), MemoryBus()
    queries = []
    for _ in range(2):  # two "processes" sharing cache and bus
        query = OrderQuery(
            OrderQueryOptions(), Authenticator(SECRET), cache, store, bus, OrderStats()
        )
        await query.start()
        queries.append(query)
    assert (await _call(queries[0], _request("5")))[0] == 200
    assert (await _call(queries[1], _request("5")))[0] == 200
    assert len(store.queries) == 1  # the second came from the shared cache
    await queries[0].invalidate(5, 6)  # one message for several ids
    assert len(queries[0].near) == 0 and len(queries[1].near) == 0
    store.orders[5] = Order(5, 1, "alice", 2, "cancelled", WHEN)
    assert _json(await _call(queries[1], _request("5")))["status"] == "cancelled"


@pytest.mark.anyio
async def test_ageing_entries_are_refreshed_behind_the_scenes() -> None:
    store = FakeStore({5: _order(5, "alice")})
    query, _ = await _make(store, near_cache_ttl=0.2)
    await _call(query, _request("5"))
    before = query.near.get(5, time.monotonic())
    await asyncio.sleep(0.16)  # past 75% of the TTL: the next hit answers and refreshes
    assert isinstance(query.handle(_request("5")), tuple)
    await asyncio.sleep(0.02)
    after = query.near.get(5, time.monotonic())
    assert before is not None and after is not None
    assert after[3] > before[3]  # reloaded with a new lifetime
    assert len(store.queries) == 1  # from the shared cache, not the database
    await query.close()


@pytest.mark.anyio
async def test_unreadable_shared_cache_value_falls_back_to_the_database() -> None:
    store = FakeStore({8: _order(8, "alice")})
    query, _ = await _make(store)
    await query._cache.set("order:8", b"{not json", ttl=60)
    response = await _call(query, _request("8"))
    assert response[0] == 200 and _json(response)["id"] == 8
    assert store.queries == [[8]]
    assert (await query._cache.get_many(["order:8"]))[0] != b"{not json"  # overwritten


@pytest.mark.anyio
async def test_near_cache_is_forgotten_when_the_bus_reconnects() -> None:
    hooks: list[object] = []

    class Bus(MemoryBus):
        def on_reconnect(self, hook: object) -> None:  # type: ignore[override]
            hooks.append(hook)

    store = FakeStore({5: _order(5, "alice")})
    query = OrderQuery(
        OrderQueryOptions(), Authenticator(SECRET), MemoryCache(), store, Bus(), OrderStats()
    )
    await query.start()
    await _call(query, _request("5"))
    assert len(query.near) == 1
    for hook in hooks:
        hook()  # type: ignore[operator]
    assert len(query.near) == 0
