"""The stock gate in Redis: Lua scripts on hash-tagged keys, loaded once, run by EVALSHA.

redis-py's `register_script` keeps the SHA1 and falls back to EVAL (which loads the script)
when Redis answers NOSCRIPT, e.g. after a restart.
"""

from __future__ import annotations

from importlib import resources

from redis import asyncio as aioredis

from surge.gate import Answer, GateState

_LUA = resources.files("surge.backends") / "lua"


# only a gate that exists learns it is sold out (a half-made one would break reserve)
_SOLD_OUT = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'remaining', 0) end
return 0
"""


def _script(name: str) -> str:
    return (_LUA / name).read_text()


class RedisGate:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._reserve = client.register_script(_script("gate_reserve.lua"))
        self._release = client.register_script(_script("gate_release.lua"))
        self._load = client.register_script(_script("gate_load.lua"))
        self._sold_out = client.register_script(_SOLD_OUT)

    def _keys(self, sale_id: int) -> list[str]:
        tag = f"{self._prefix}{{sale:{sale_id}}}"
        return [f"{tag}:meta", f"{tag}:bought", f"{tag}:keys"]

    async def load(self, state: GateState, replace: bool = False) -> bool:
        args: list[str | int] = [
            1 if replace else 0,
            state.remaining,
            state.per_user_limit,
            state.starts_ms,
            state.ends_ms,
        ]
        for user, bought in state.bought.items():
            args += [user, bought]
        return bool(await self._load(keys=self._keys(state.sale_id), args=args))

    async def reserve(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer:
        outcome, remaining, order_id = await self._reserve(
            keys=self._keys(sale_id), args=[user_id, f"{user_id}|{key}", quantity, fingerprint]
        )
        return Answer(outcome.decode(), int(remaining), int(order_id))

    async def confirm(
        self, sale_id: int, user_id: str, key: str, fingerprint: str, order_id: int
    ) -> None:
        await self._client.hset(
            self._keys(sale_id)[2], f"{user_id}|{key}", f"d|{fingerprint}|{order_id}"
        )

    async def release(self, sale_id: int, user_id: str, key: str, quantity: int) -> int:
        left = await self._release(
            keys=self._keys(sale_id), args=[user_id, f"{user_id}|{key}", quantity]
        )
        return int(left)

    async def sold_out(self, sale_id: int) -> None:
        await self._sold_out(keys=self._keys(sale_id)[:1])

    async def remaining(self, sale_id: int) -> int | None:
        value = await self._client.hget(self._keys(sale_id)[0], "remaining")
        return None if value is None else int(value)
