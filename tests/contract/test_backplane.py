"""The hub's backplane on every backend kind: in-process, or Redis (one Lua script):
numbering and history, bounded in messages and in bytes per room."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from surge.backends import BackendOptions, open_backends
from surge.backends.memory_backplane import LocalBackplane
from surge.backends.redis_backplane import RedisBackplane
from surge.ground.rooms import ROOM_SHARE, Backplane
from tests.backends import Backend

pytestmark = pytest.mark.anyio

BUDGET = 320_000  # a room: 20,000 bytes


@contextlib.asynccontextmanager
async def _backplane(backend: Backend) -> AsyncIterator[Backplane]:
    if backend.redis_url is None:
        yield LocalBackplane(BUDGET)
        return
    options = BackendOptions(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        prefix=backend.prefix,
        history_bytes=BUDGET,
    )
    async with contextlib.AsyncExitStack() as stack:
        opened = await open_backends(options, stack)
        assert isinstance(opened.backplane, RedisBackplane)
        yield opened.backplane


async def test_history_keeps_the_last_messages_within_a_room_s_bytes(backend: Backend) -> None:
    async with _backplane(backend) as plane:
        small = b'"s"'
        for _ in range(5):
            await plane.publish("chat:bounded", small, keep=3)
        kept, latest = await plane.history("chat:bounded")
        assert latest == 5 and [seq for seq, _ in kept] == [3, 4, 5]
        big = b'"' + b"x" * 6_000 + b'"'  # three fit in 20,000 bytes, four do not
        for _ in range(10):
            await plane.publish("chat:bounded", big, keep=100)
        kept, latest = await plane.history("chat:bounded")
        assert latest == 15
        assert [seq for seq, _ in kept] == [13, 14, 15]
        assert sum(len(p) for _, p in kept) <= BUDGET // ROOM_SHARE
        assert json.loads(kept[-1][1])["seq"] == 15
        too_big = b'"' + b"z" * 30_000 + b'"'  # over a room's whole share: numbered, not kept
        assert await plane.publish("chat:bounded", too_big, keep=100) == 16
        kept, _ = await plane.history("chat:bounded")
        assert [seq for seq, _ in kept] == [13, 14, 15]


async def test_presence_counts_the_other_processes(backend: Backend) -> None:
    """Each process shares its subscribers per room; `others` sums the other processes'
    (one process alone: nobody else)."""
    async with _backplane(backend) as first, _backplane(backend) as second:
        await first.share_counts({"chat:here": 3, "user:alice": 1})
        await second.share_counts({"chat:here": 2})
        if backend.redis_url is None:
            assert await second.others("chat:here") == 0
            return
        assert await second.others("chat:here") == 3 and await first.others("chat:here") == 2
        assert await second.others("user:alice") == 1 and await first.others("chat:none") == 0
        await first.share_counts({"chat:here": 0})  # its last subscriber left
        assert await second.others("chat:here") == 0
