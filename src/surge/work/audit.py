"""The audit log: every event as one JSON line, appended to a file and fsynced before the
event is acknowledged (so an acknowledged event survives a machine crash too), the lines
of concurrent events in one write and one fsync.

    {"event": "17.1795832461", "topic": "order.confirmed", "at": "2026-11-28T06:01:01Z",
     "recorded": "2026-11-28T06:01:01.2Z", "data": {"order_id": 17, ...}}

A line may appear twice (at-least-once: a worker that died after writing it and before
acknowledging); readers deduplicate on `event`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from surge.ground.events import Event
from surge.ground.tasks import shared_task


class AuditLog:
    """Group commit: the lines of the events handled at the same moment (a consumer has
    up to SURGE_WORKER_CONCURRENCY in flight) go out in one write and one fsync, and
    each caller returns once its line is on disk. One fsync per line capped the audit at
    the disk's fsync rate (about 250 lines a second here)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._waiting: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None
        # held by the thread while it writes: a task cancelled during a write (shutdown)
        # leaves the thread going, and close() must not pull the fd from under it
        self._writing = threading.Lock()

    async def __call__(self, event: Event) -> None:
        line = orjson.dumps(
            {
                "event": event.id,
                "topic": event.topic,
                "at": _iso(event.created),
                "recorded": _iso(time.time()),
                "data": orjson.loads(event.payload),  # a payload that is not JSON fails here
            }
        )
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((line + b"\n", written))
        if not self._flushing:
            self._flushing = True
            self._flusher = shared_task(self._flush())
        await written

    async def _flush(self) -> None:
        """Writes what is waiting, then what came meanwhile, until nothing is left."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await asyncio.to_thread(self._append, b"".join(line for line, _ in batch))
                except Exception as exc:
                    for _, written in batch:
                        if not written.done():
                            written.set_exception(exc)
                    continue
                for _, written in batch:
                    if not written.done():
                        written.set_result(None)
        finally:
            self._flushing = False

    def _append(self, lines: bytes) -> None:
        with self._writing:
            if self._fd is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            # one O_APPEND write: whole lines, even with other processes appending (a
            # short write happens only on a full disk; the rest follows)
            view = memoryview(lines)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=5.0)
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._writing:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")
