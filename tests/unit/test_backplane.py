"""The in-process backplane: numbering, history, delivery, and its bound on rooms."""

from __future__ import annotations

import json

import pytest

from surge.backends.memory_backplane import LocalBackplane
from surge.ground.rooms import ROOM_SHARE

pytestmark = pytest.mark.anyio


async def test_numbers_keeps_and_delivers() -> None:
    plane = LocalBackplane()
    heard: list[tuple[str, int, dict[str, object]]] = []
    await plane.start(
        lambda room, seq, payload: heard.append((room, seq, json.loads(payload))), lambda: None
    )
    for i in range(5):
        assert await plane.publish("chat:a", b'{"i":%d}' % i, keep=3) == i + 1
    assert await plane.publish("chat:b", b"true", keep=0) == 1
    kept, latest = await plane.history("chat:a")
    assert latest == 5 and [seq for seq, _ in kept] == [3, 4, 5]
    assert json.loads(kept[-1][1]) == {
        "op": "message",
        "room": "chat:a",
        "seq": 5,
        "data": {"i": 4},
    }
    assert await plane.history("chat:b") == ([], 1)
    assert heard[-1] == ("chat:b", 1, {"op": "message", "room": "chat:b", "seq": 1, "data": True})


async def test_the_least_recently_published_room_is_forgotten_first() -> None:
    plane = LocalBackplane()
    plane.MAX_ROOMS = 3
    await plane.start(lambda *_: None, lambda: None)
    for room in ("chat:a", "chat:b", "chat:c"):
        await plane.publish(room, b"1", keep=10)
    await plane.publish("chat:a", b"2", keep=10)  # a is recent again; b is now the oldest
    await plane.publish("chat:d", b"1", keep=10)
    assert await plane.history("chat:b") == ([], 0)  # forgotten: numbering starts over
    assert (await plane.history("chat:a"))[1] == 2
    assert (await plane.history("chat:d"))[1] == 1


async def test_history_is_bounded_in_bytes_per_room_and_in_all() -> None:
    """Issue 12 #13: 2,000 publishes of 60 KB into 20 rooms stayed resident (114 MiB)
    after every client had left."""
    budget = 1_600_000
    plane = LocalBackplane(max_bytes=budget)
    await plane.start(lambda *_: None, lambda: None)
    blob = b'"' + b"x" * 60_000 + b'"'
    for i in range(2000):
        await plane.publish(f"chat:r{i % 20}", blob, keep=100)
        assert plane.history_bytes <= budget
    kept, latest = await plane.history("chat:r19")
    assert latest == 100
    sizes = sum(len(p) for _, p in kept)
    assert 0 < sizes <= budget // ROOM_SHARE
    assert [seq for seq, _ in kept] == list(range(latest - len(kept) + 1, latest + 1))
    # the byte count is exact: what the rooms hold, no more, no less
    total = 0
    for i in range(20):
        total += sum(len(p) for _, p in (await plane.history(f"chat:r{i}"))[0])
    assert total == plane.history_bytes


async def test_the_whole_budget_takes_from_the_least_recently_published_rooms() -> None:
    plane = LocalBackplane(max_bytes=16 * 1000)  # 1,000 bytes a room
    await plane.start(lambda *_: None, lambda: None)
    message = b'"' + b"y" * 400 + b'"'
    for i in range(40):  # 2 messages in each of 40 rooms: 40 * 2 * ~450 > 16,000
        await plane.publish(f"chat:{i}", message, keep=10)
        await plane.publish(f"chat:{i}", message, keep=10)
    assert plane.history_bytes <= 16 * 1000
    assert (await plane.history("chat:0"))[0] == []  # the oldest rooms gave theirs up
    assert len((await plane.history("chat:39"))[0]) == 2
