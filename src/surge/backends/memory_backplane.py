"""The in-process backplane: a room's numbers, history and delivery in one process."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from surge.ground.evict import evict_oldest
from surge.ground.rooms import ROOM_SHARE, Deliver, room_message


class LocalBackplane:
    """One process: numbers and history in memory, delivered at once.

    Bounded three ways: at most `MAX_ROOMS` rooms are remembered (the one published to
    least recently is forgotten first; its subscribers resuming later are told to
    resync), a room keeps at most `max_bytes // ROOM_SHARE` bytes of history, and all
    rooms together at most `max_bytes` (the oldest messages of the least recently
    published rooms go first). History is kept when nobody listens, so without these a
    room that was busy once would hold its messages for good."""

    MAX_ROOMS = 10_000

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._seq: dict[str, int] = {}
        self._kept: dict[str, deque[tuple[int, bytes]]] = {}
        self._room_bytes: dict[str, int] = {}
        self._bytes = 0
        self._max_bytes = max_bytes
        self._deliver: Deliver | None = None

    @property
    def history_bytes(self) -> int:
        return self._bytes

    async def start(self, deliver: Deliver, lost: Callable[[], None]) -> None:
        self._deliver = deliver  # nothing to lose in one process: `lost` is never called

    async def share_counts(self, counts: Mapping[str, int]) -> None:
        """One process: nobody else to tell."""

    async def others(self, room: str) -> int:
        return 0

    async def publish(self, room: str, data: bytes, keep: int) -> int:
        seq = self._seq.pop(room, 0) + 1  # re-inserted last: dicts keep insertion order
        self._seq[room] = seq
        if len(self._seq) > self.MAX_ROOMS:  # the least recently published hundredth
            for oldest in evict_oldest(self._seq, self.MAX_ROOMS):
                self._forget_history(oldest)
        payload = room_message(room, seq, data)
        if keep > 0:
            self._keep(room, seq, payload, keep)
        if self._deliver is not None:
            self._deliver(room, seq, payload)
        return seq

    def _keep(self, room: str, seq: int, payload: bytes, keep: int) -> None:
        room_limit = self._max_bytes // ROOM_SHARE
        if len(payload) > room_limit:
            return  # numbered and delivered, never kept (as RedisBackplane)
        # popped and put back: the rooms stay in the order they were last published to
        kept = self._kept.pop(room, None) or deque()
        size = self._room_bytes.pop(room, 0) + len(payload)
        kept.append((seq, payload))
        self._bytes += len(payload)
        while kept and (len(kept) > keep or size > room_limit):
            dropped = len(kept.popleft()[1])
            size -= dropped
            self._bytes -= dropped
        if kept:
            self._kept[room], self._room_bytes[room] = kept, size
        # over the whole budget: the least recently published rooms lose their oldest
        for other in list(self._kept):
            if self._bytes <= self._max_bytes:
                break
            self._trim(other)

    def _trim(self, room: str) -> None:
        kept = self._kept[room]
        while kept and self._bytes > self._max_bytes:
            dropped = len(kept.popleft()[1])
            self._bytes -= dropped
            self._room_bytes[room] -= dropped
        if not kept:
            del self._kept[room]
            del self._room_bytes[room]

    def _forget_history(self, room: str) -> None:
        if self._kept.pop(room, None) is not None:
            self._bytes -= self._room_bytes.pop(room)

    async def history(self, room: str) -> tuple[list[tuple[int, bytes]], int]:
        return list(self._kept.get(room, ())), self._seq.get(room, 0)
