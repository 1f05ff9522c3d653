"""The stock gate in Redis: Lua scripts on hash-tagged keys, loaded once, run by EVALSHA.

redis-py's `register_script` keeps the SHA1 and falls back to EVAL (which loads the script)
when Redis answers NOSCRIPT, e.g. after a restart.

Reservations are batched: the attempts on one sale that arrive in one turn of the event
loop go to Redis as ONE script call, decided one after the other inside it. In a storm
every process has a hundred attempts or more in flight at once; one command each cost
a pooled connection, a write and a reply to wake up for each, and the gate's latency
(p50 23 ms, p99 108 ms measured in the storm) was most of a winner's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from functools import partial

from surge.backends.redis import Client
from surge.backends.scripts import lua_script
from surge.ground.purchases import (
    UNCERTAIN_FOR_MS,
    Answer,
    Confirmed,
    GateState,
    Reconciled,
    StoredOrder,
    field_of,
)
from surge.ground.retry import keep_trying
from surge.ground.tasks import Tasks

log = logging.getLogger("surge.gate")


_Attempt = tuple[str, str, int, str, "asyncio.Future[Answer]"]  # user, key, qty, fp, answer


class RedisGate:
    MAX_BATCH = 256  # attempts per script call: Redis runs a call of this size in ~1 ms
    UNDO_FOR = 60.0  # seconds a failed call's reservations are retried to be given back

    def __init__(self, client: Client, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._waiting: dict[int, list[_Attempt]] = {}  # sale -> attempts of this loop turn
        self._tasks = Tasks()
        self._reserve = client.register_script(lua_script("gate_reserve.lua"))
        self._release = client.register_script(lua_script("gate_release.lua"))
        self._reconcile = client.register_script(lua_script("gate_reconcile.lua"))
        self._sold_out = client.register_script(lua_script("gate_sold_out.lua"))
        self._confirm = client.register_script(lua_script("gate_confirm.lua"))
        self._retake = client.register_script(lua_script("gate_retake.lua"))
        self._return = client.register_script(lua_script("gate_return.lua"))

    def _keys(self, sale_id: int) -> list[str]:
        tag = f"{self._prefix}{{sale:{sale_id}}}"
        return [f"{tag}:meta", f"{tag}:bought", f"{tag}:keys"]

    async def reconcile(self, state: GateState, stale_ms: int) -> Reconciled:
        args: list[str | int] = [
            state.remaining,
            state.per_user_limit,
            state.starts_ms,
            state.ends_ms,
            stale_ms,
            UNCERTAIN_FOR_MS,
        ]
        for o in state.orders:
            field = field_of(o.user_id, o.key)
            kind = "r" if o.returned else "d"
            args += [field, o.user_id, o.order_id, o.quantity, o.fingerprint, kind]
        before, after, dropped = await self._reconcile(keys=self._keys(state.sale_id), args=args)
        return Reconciled(None if before < 0 else int(before), int(after), int(dropped))

    async def reserve(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        waiting = self._waiting.get(sale_id)
        if waiting is None:
            waiting = self._waiting[sale_id] = []
            # its first step runs in the next loop turn: the rest of this one joins the call
            self._tasks.spawn(self._send(sale_id))
        waiting.append((user_id, key, quantity, fingerprint, answer))
        try:
            return await answer
        except asyncio.CancelledError:
            # Cancelled after the answer came but before we resumed: a reservation made
            # for nobody. (Cancelled before it came, `_decide` gives it back.)
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                if answer.result().outcome == "ok":
                    self._tasks.spawn(
                        self._abandoned(sale_id, user_id, key, quantity), shared=False
                    )
            raise

    async def _send(self, sale_id: int) -> None:
        """One script call for the lot (more past MAX_BATCH). It runs as its own task, so
        a caller that gave up (deadline) cannot cut it off between Redis reserving and us
        hearing it: a reservation nobody waits for any more is given back at once."""
        attempts = self._waiting.pop(sale_id, [])
        for start in range(self.MAX_BATCH, len(attempts), self.MAX_BATCH):
            chunk = attempts[start : start + self.MAX_BATCH]
            self._tasks.spawn(self._decide(sale_id, chunk))
        await self._decide(sale_id, attempts[: self.MAX_BATCH])

    async def _decide(self, sale_id: int, attempts: list[_Attempt]) -> None:
        call = uuid.uuid4().hex  # marks what this call reserves: see gate_reserve.lua
        args: list[str | int] = [call]
        for user_id, key, quantity, fingerprint, _ in attempts:
            args += (user_id, field_of(user_id, key), quantity, fingerprint)
        try:
            flat = await self._reserve(keys=self._keys(sale_id), args=args)
        except Exception as exc:
            for *_, answer in attempts:
                if not answer.done():
                    answer.set_exception(exc)
            # Redis may have run the call and only the answer be lost (a timeout, a
            # dropped connection): whatever it reserved is given back at once, rather than
            # when the reconciliation finds it stale
            self._tasks.spawn(self._undo(sale_id, call, attempts))
            return
        abandoned = []
        for i, (user_id, key, quantity, _, answer) in enumerate(attempts):
            outcome = flat[3 * i].decode()
            if not answer.done():
                answer.set_result(Answer(outcome, int(flat[3 * i + 1]), int(flat[3 * i + 2])))
            elif outcome == "ok":
                abandoned.append((user_id, key, quantity))
        for user_id, key, quantity in abandoned:
            await self._abandoned(sale_id, user_id, key, quantity, call)

    async def _undo(self, sale_id: int, call: str, attempts: list[_Attempt]) -> None:
        """Releases what the failed `call` may have reserved (only that: the token keeps
        another call's reservation of the same key), retrying while Redis is unreachable
        for up to UNDO_FOR seconds (then the reconciliation drops it as stale)."""
        deadline = time.monotonic() + self.UNDO_FOR
        for user_id, key, quantity, _, _ in attempts:
            released = await keep_trying(
                partial(
                    self._release,
                    keys=self._keys(sale_id),
                    args=[user_id, field_of(user_id, key), quantity, call, 0, ""],
                ),
                f"sale {sale_id}: giving back a failed call's reservations",
                max(0.0, deadline - time.monotonic()),
            )
            if not released:
                return

    async def _abandoned(
        self, sale_id: int, user_id: str, key: str, quantity: int, call: str = ""
    ) -> None:
        """Gives back a reservation made for a caller that gave up, retrying while Redis
        fails (a timeout under load, a failover) for up to UNDO_FOR seconds; then the
        reconciliation frees it once stale (docs/sales.md). A retried release is harmless
        (gate_release.lua); with the call's token it cannot take another call's."""
        await keep_trying(
            partial(
                self._release,
                keys=self._keys(sale_id),
                args=[user_id, field_of(user_id, key), quantity, call, 0, ""],
            ),
            f"sale {sale_id}: giving back an abandoned reservation",
            self.UNDO_FOR,
        )

    async def confirm(self, sale_id: int, orders: Sequence[Confirmed]) -> None:
        if orders:
            meta, _, keys = self._keys(sale_id)
            args: list[str] = []
            for o in orders:
                args += (field_of(o.user_id, o.key), f"d|{o.fingerprint}|{o.order_id}|{o.quantity}")
            await self._confirm(keys=[meta, keys], args=args)

    async def release(
        self,
        sale_id: int,
        user_id: str,
        key: str,
        quantity: int,
        uncertain: bool = False,
        fingerprint: str = "",
    ) -> int:
        left = await self._release(
            keys=self._keys(sale_id),
            args=[user_id, field_of(user_id, key), quantity, "", int(uncertain), fingerprint],
        )
        return int(left)

    async def give_back(self, sale_id: int, order: StoredOrder) -> int:
        field = field_of(order.user_id, order.key)
        args: list[str | int] = [order.user_id, field, order.order_id, order.quantity]
        args.append(order.fingerprint)
        return int(await self._return(keys=self._keys(sale_id), args=args))

    async def retake(
        self, sale_id: int, user_id: str, key: str, quantity: int, fingerprint: str
    ) -> Answer:
        outcome, remaining, age = await self._retake(
            keys=self._keys(sale_id),
            args=[user_id, field_of(user_id, key), quantity, fingerprint, uuid.uuid4().hex],
        )
        return Answer(outcome.decode(), int(remaining), uncertain_ms=int(age))

    async def sold_out(self, sale_id: int) -> None:
        await self._sold_out(keys=self._keys(sale_id)[:1])

    async def remaining(self, sale_id: int) -> int | None:
        value = await self._client.hget(self._keys(sale_id)[0], "remaining")
        return None if value is None else int(value)

    async def keys(self, sale_id: int) -> frozenset[str] | None:
        meta, _, keys = self._keys(sale_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.exists(meta)
            pipe.hkeys(keys)
            exists, fields = await pipe.execute()
        return frozenset(f.decode() for f in fields) if exists else None

    async def claim(self, sale_id: int, seconds: float) -> bool:
        lease = f"{self._prefix}{{sale:{sale_id}}}:reconciler"
        return bool(await self._client.set(lease, 1, nx=True, px=max(1, int(seconds * 1000))))
