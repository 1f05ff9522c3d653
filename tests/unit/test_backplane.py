"""The in-process backplane: numbering, history, delivery, and its bound on rooms."""

from __future__ import annotations

import json

import pytest

from surge.realtime.backplane import LocalBackplane

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
