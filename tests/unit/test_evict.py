"""Bounded dicts make room a batch of their oldest keys at a time (surge.ground.evict)."""

from __future__ import annotations

from surge.ground.evict import evict_oldest
from surge.orders import NearCache


def test_the_oldest_hundredth_leaves() -> None:
    data = {i: str(i) for i in range(1_000)}
    data[5] = "moved"  # an update keeps its place
    del data[7]
    data[7] = "re-inserted"  # a re-insert is the newest
    assert evict_oldest(data, 1_000) == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10]
    assert len(data) == 990 and 7 in data and 11 in data


def test_a_small_bound_still_makes_room_for_one() -> None:
    data = {"a": 1, "b": 2}
    assert evict_oldest(data, 2) == ["a"]
    assert data == {"b": 2}


def test_a_full_near_cache_keeps_its_newest_entries_and_its_bound() -> None:
    cache = NearCache(1_000, 60.0)
    answer = (200, b"head", b"body")
    for order_id in range(1, 5_001):
        cache.put(order_id, "u", answer, 60.0)
        assert len(cache) <= 1_000
    assert len(cache) > 980
    assert all(order_id in cache.data for order_id in range(4_981, 5_001))  # the newest
    assert 1 not in cache.data and 4_000 not in cache.data
