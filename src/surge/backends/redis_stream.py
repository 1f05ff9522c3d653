"""The event stream on Redis Streams: one stream, a consumer group per consumer.

Keys share one hash tag, so every MULTI below stays in one Redis Cluster slot:
  {P}events             the stream (fields: id, topic, payload, created[, only])
  {P}events:dead        dead letters (the same fields plus group, error, attempts, buried)
  {P}events:done:G:E    "group G handled event E", kept `dedup_ttl` seconds
  {P}events:attempts:G  hash: event id -> failed attempts so far
The acknowledgement and the "done" mark are written in one MULTI, so a duplicate can only
come from a consumer that did the work and died before that MULTI (docs/worker.md).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from surge.backends.redis import Client
from surge.ground.events import DeadLetter, Delivery, Event

# XCLAIM ... IDLE: "delivered this long ago", so any consumer may claim the entry at once
_LONG_AGO_MS = 10**10
_OWNED_SCAN = 10_000  # pending entries of one consumer looked at (its concurrency is 16)
_ENTRY_ID = re.compile(r"\d+-\d+")
T = TypeVar("T")
log = logging.getLogger("surge.stream")


class RedisStream:
    def __init__(self, client: Client, prefix: str, dedup_ttl: float) -> None:
        self._redis = client
        tag = "{" + prefix + "events}"
        self.key = tag
        self.dead_key = tag + ":dead"
        self._done = tag + ":done:"
        self._attempts = tag + ":attempts:"
        self._ttl = max(1, int(dedup_ttl))
        self._claim_cursor: dict[str, str] = {}
        self._groups: tuple[str, ...] = ()

    async def prepare(self, groups: Sequence[str]) -> None:
        self._groups = tuple(dict.fromkeys((*self._groups, *groups)))
        for group in self._groups:
            try:
                await self._redis.xgroup_create(self.key, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def publish(self, events: Sequence[Event]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.key, _fields(event))
        await pipe.execute()

    async def _grouped(self, call: Callable[[], Awaitable[T]]) -> T:
        """Runs `call`; if the groups are gone (Redis restarted without persistence, was
        flushed, or evicted the key), makes them again and runs it once more. Made anew
        at 0, a group gets every entry published meanwhile."""
        try:
            return await call()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
        log.warning("stream %s lost its consumer groups: creating them again", self.key)
        await self.prepare(())
        return await call()

    async def read(self, group: str, consumer: str, count: int, block: float) -> list[Delivery]:
        ms = max(1, int(block * 1000))
        reply: Any = await self._grouped(
            lambda: self._redis.xreadgroup(group, consumer, {self.key: ">"}, count=count, block=ms)
        )
        return [d for _stream, entries in reply or () for d in _deliveries(entries)]

    async def claim_stale(
        self, group: str, consumer: str, min_idle: float, count: int
    ) -> list[Delivery]:
        start = self._claim_cursor.get(group, "0-0")
        reply: Any = await self._grouped(
            lambda: self._redis.xautoclaim(
                self.key, group, consumer, int(min_idle * 1000), start_id=start, count=count
            )
        )
        # Redis 7: [next start, claimed entries, ids deleted meanwhile (dropped by Redis)]
        self._claim_cursor[group] = _text(reply[0])
        return _deliveries(reply[1])

    async def touch(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        owned = await self._owned(group, consumer, entries)
        if owned:
            await self._redis.xclaim(self.key, group, consumer, 0, _ids(owned), justid=True)

    async def release(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        owned = await self._owned(group, consumer, entries)
        if owned:
            await self._redis.xclaim(
                self.key, group, consumer, 0, _ids(owned), idle=_LONG_AGO_MS, justid=True
            )

    async def forget(self, group: str, consumer: str) -> None:
        # only when it holds nothing: DELCONSUMER drops the consumer's pending entries too
        held: Any = await self._redis.xpending_range(
            self.key, group, "-", "+", 1, consumername=consumer
        )
        if not held:
            await self._redis.xgroup_delconsumer(self.key, group, consumer)

    async def _owned(self, group: str, consumer: str, entries: Sequence[str]) -> list[str]:
        """Those of `entries` still pending for `consumer`: XCLAIM does not ask whose an
        entry is, and must not take back one another worker has taken over meanwhile."""
        if not entries:
            return []
        mine: Any = await self._grouped(
            lambda: self._redis.xpending_range(
                self.key, group, "-", "+", _OWNED_SCAN, consumername=consumer
            )
        )
        held = {_text(row["message_id"]) for row in mine}
        return [entry for entry in entries if entry in held]

    async def done(self, group: str, event_id: str) -> bool:
        return bool(await self._redis.exists(self._done + group + ":" + event_id))

    async def ack(self, group: str, delivery: Delivery, handled: bool = True) -> None:
        if not handled:
            await self._grouped(lambda: self._redis.xack(self.key, group, delivery.entry))
            return
        event_id = delivery.event.id
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self._done + group + ":" + event_id, b"1", ex=self._ttl)
        pipe.xack(self.key, group, delivery.entry)
        pipe.hdel(self._attempts + group, event_id)
        await pipe.execute()

    async def failed(self, group: str, delivery: Delivery) -> int:
        return int(await self._redis.hincrby(self._attempts + group, delivery.event.id, 1))

    async def bury(self, group: str, delivery: Delivery, error: str, attempts: int) -> None:
        fields = _fields(delivery.event)
        fields.update(
            {
                b"group": group.encode(),
                b"error": error.encode()[:2000],
                b"attempts": str(attempts).encode(),
                b"buried": repr(time.time()).encode(),
            }
        )
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(self.dead_key, fields)
        pipe.xack(self.key, group, delivery.entry)
        pipe.hdel(self._attempts + group, delivery.event.id)
        await pipe.execute()

    async def dead_letters(self, count: int) -> list[DeadLetter]:
        entries: Any = await self._redis.xrange(self.dead_key, count=count)
        return [_dead_letter(entry, fields) for entry, fields in entries]

    async def replay(self, entries: Sequence[str]) -> int:
        found = 0
        for entry in entries:
            if not _ENTRY_ID.fullmatch(entry):
                continue  # not an id this stream could have given: not found
            rows: Any = await self._redis.xrange(self.dead_key, min=entry, max=entry)
            if not rows:
                continue
            letter = _dead_letter(*rows[0])
            fields = _fields(letter.event)
            fields[b"only"] = letter.group.encode()
            pipe = self._redis.pipeline(transaction=True)
            pipe.xadd(self.key, fields)
            pipe.xdel(self.dead_key, entry)
            await pipe.execute()
            found += 1
        return found

    async def dead_count(self) -> int:
        return int(await self._redis.xlen(self.dead_key))

    async def pending(self, group: str) -> int:
        for info in await self._redis.xinfo_groups(self.key):
            if _text(info["name"]) == group:
                return int(info["pending"]) + int(info.get("lag") or 0)
        raise LookupError(f"stream {self.key} has no consumer group {group!r}")

    async def trim(self) -> None:
        """Drops what every group has acknowledged (XTRIM MINID): not a length cap, which
        would drop entries a slow or stopped group has not read yet."""
        keep: list[tuple[int, int]] = []
        for info in await self._redis.xinfo_groups(self.key):
            last = _id(_text(info["last-delivered-id"]))
            keep.append((last[0], last[1] + 1))
            if int(info["pending"]):
                summary = await self._redis.xpending(self.key, _text(info["name"]))
                keep.append(_id(_text(summary["min"])))
        if keep:
            oldest = min(keep)
            await self._redis.xtrim(self.key, minid=f"{oldest[0]}-{oldest[1]}", approximate=True)

    async def close(self) -> None:
        pass  # the client belongs to whoever made it


def _fields(event: Event) -> dict[Any, Any]:  # redis-py's field types, loosely
    return {
        b"id": event.id.encode(),
        b"topic": event.topic.encode(),
        b"payload": event.payload,
        b"created": repr(event.created).encode(),
    }


def _event(fields: dict[Any, Any]) -> Event:
    return Event(
        fields[b"id"].decode(),
        fields[b"topic"].decode(),
        fields[b"payload"],
        float(fields[b"created"]),
    )


def _deliveries(entries: Any) -> list[Delivery]:
    out = []
    for entry, fields in entries:
        if not fields:
            continue  # deleted while pending
        only = fields.get(b"only")
        out.append(Delivery(_text(entry), _event(fields), only.decode() if only else None))
    return out


def _dead_letter(entry: Any, fields: Any) -> DeadLetter:
    return DeadLetter(
        _text(entry),
        _event(fields),
        fields[b"group"].decode(),
        fields[b"error"].decode(errors="replace"),
        int(fields[b"attempts"]),
        float(fields[b"buried"]),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq or 0)


def _ids(entries: list[str]) -> Any:
    return entries  # redis-py's stubs want a list of a wider element type (list is invariant)
