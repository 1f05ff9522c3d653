"""The Redis bus survives a Redis restart and says so (near caches must be forgotten)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError

from surge.backends.redis import RedisBus, connect
from tests.backends import own_redis

pytestmark = pytest.mark.anyio


async def _wait_for(condition: object, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


async def test_bus_reconnects_after_a_redis_restart(tmp_path: Path) -> None:
    with own_redis(tmp_path) as redis:
        client = connect(redis.url, pool_size=4, timeout=0.5)
        bus = RedisBus(client, "t:")
        got: list[bytes] = []
        reconnects: list[int] = []
        await bus.subscribe("ch", got.append)
        bus.on_reconnect(lambda: reconnects.append(1))
        await bus.publish("ch", b"before")
        assert await _wait_for(lambda: got == [b"before"], 5)

        redis.stop()
        await asyncio.sleep(0.3)
        redis.start()
        assert await _wait_for(lambda: reconnects, 15), "no reconnection noticed"
        # subscribed again: new messages arrive
        for _ in range(100):
            try:
                await bus.publish("ch", b"after")
            except ConnectionError:  # the publisher's pooled connection died with Redis
                pass
            if b"after" in got:
                break
            await asyncio.sleep(0.1)
        assert b"after" in got
        await bus.close()
        await client.aclose()
