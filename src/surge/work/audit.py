"""The audit log: every event as one JSON line, appended to a file and fsynced before the
event is acknowledged (so an acknowledged event survives a machine crash too).

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

from surge.types import Event


class AuditLog:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._lock = asyncio.Lock()  # one append at a time: lines never interleave
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
        async with self._lock:
            await asyncio.to_thread(self._append, line + b"\n")

    def _append(self, line: bytes) -> None:
        with self._writing:
            if self._fd is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            os.write(self._fd, line)  # one O_APPEND write: whole lines, even across processes
            os.fsync(self._fd)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._writing:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat().replace("+00:00", "Z")
