"""Rate-limit buckets, in-process and in Redis: one contract, exactly L through."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from surge.backends.memory_buckets import LocalBuckets
from surge.backends.redis import connect
from surge.backends.redis_limits import RedisBuckets
from surge.ground.admission import Verdict
from surge.ground.buckets import Policy
from tests.backends import REDIS_KINDS, shared_redis_url

pytestmark = pytest.mark.anyio


async def _verdict(buckets: LocalBuckets | RedisBuckets, policy: Policy, caller: str) -> Verdict:
    answer = buckets.check(policy, caller)
    return answer if isinstance(answer, Verdict) else await answer


@pytest.fixture(params=["local", *REDIS_KINDS])
async def buckets(request: pytest.FixtureRequest) -> AsyncIterator[LocalBuckets | RedisBuckets]:
    if request.param == "local":
        yield LocalBuckets()
        return
    client = connect(shared_redis_url(request.param), pool_size=8)
    prefix = f"surge-test-{uuid.uuid4().hex[:12]}:"
    errors: list[Exception] = []
    made = RedisBuckets(client, prefix, LocalBuckets(), errors.append, timeout=2.0)
    try:
        yield made
        assert not errors  # every verdict came from Redis
    finally:
        await made.close()
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_concurrent_requests_at_limit_l_let_exactly_l_through(
    buckets: LocalBuckets | RedisBuckets,
) -> None:
    policy = Policy("read", rate=0.01, burst=7)  # no refill within the test
    verdicts = await asyncio.gather(*(_verdict(buckets, policy, "u:alice") for _ in range(40)))
    assert sum(v.allowed for v in verdicts) == 7
    refused = [v for v in verdicts if not v.allowed]
    assert all(v.remaining == 0 and 90 < v.wait <= 100 for v in refused)  # 1 token / 0.01/s
    remaining = sorted((v.remaining for v in verdicts if v.allowed), reverse=True)
    assert remaining == [6, 5, 4, 3, 2, 1, 0]
    assert (await _verdict(buckets, policy, "u:bob")).allowed  # others unaffected


async def test_tokens_come_back_at_the_rate(buckets: LocalBuckets | RedisBuckets) -> None:
    policy = Policy("write", rate=20.0, burst=2)
    assert [(await _verdict(buckets, policy, "ip:1")).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    await asyncio.sleep(0.12)  # 2.4 tokens' worth, capped at the burst of 2
    assert [(await _verdict(buckets, policy, "ip:1")).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]


def _hammer(url: str, prefix: str, count: int, start_at: float) -> int:
    async def main() -> int:
        client = connect(url, pool_size=4)
        made = RedisBuckets(client, prefix, LocalBuckets(), lambda exc: None, timeout=5.0)
        try:
            policy = Policy("read", rate=0.01, burst=25)
            await asyncio.sleep(max(0.0, start_at - time.time()))  # all at once
            verdicts = await asyncio.gather(
                *(_verdict(made, policy, "u:crowd") for _ in range(count))
            )
            return sum(v.allowed for v in verdicts)
        finally:
            await made.close()
            await client.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize("kind", REDIS_KINDS)
def test_several_processes_share_one_limit(kind: str) -> None:
    url = shared_redis_url(kind)
    prefix = f"surge-test-{uuid.uuid4().hex[:12]}:"
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3  # after every process has started and connected
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=context) as pool:
        results = [pool.submit(_hammer, url, prefix, 30, start_at) for _ in range(4)]
        allowed = [r.result(timeout=60) for r in results]
    assert sum(allowed) == 25  # 120 attempts from 4 processes at a limit of 25


async def test_redis_down_falls_back_to_this_process() -> None:
    client = connect("redis://127.0.0.1:1/0", pool_size=2)  # nothing listens on port 1
    errors: list[Exception] = []
    made = RedisBuckets(client, "surge-test:", LocalBuckets(), errors.append, timeout=1.0)
    try:
        policy = Policy("read", rate=0.01, burst=2)
        verdicts = [await _verdict(made, policy, "u:x") for _ in range(3)]
        assert [v.allowed for v in verdicts] == [True, True, False]  # local buckets decide
        assert len(errors) == 3
    finally:
        await made.close()
        await client.aclose()
