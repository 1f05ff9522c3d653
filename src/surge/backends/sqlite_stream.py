"""The event stream of the embedded default: Redis Streams' semantics in an SQLite file.

The file (`events.db` in the data dir) survives restarts, so what the relay handed over
is not lost with the process, and several processes on one machine may share it (WAL,
write transactions taken with BEGIN IMMEDIATE). Each call is one transaction run on a
single thread of its own: aiosqlite would hop threads once per statement, and a read
here is four statements that must commit together.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from surge.ground.events import DeadLetter, Delivery, Event

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, topic TEXT NOT NULL,
  payload BLOB NOT NULL, created REAL NOT NULL, only_group TEXT);
CREATE TABLE IF NOT EXISTS cursors (grp TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
  grp TEXT NOT NULL, seq INTEGER NOT NULL, consumer TEXT NOT NULL, delivered REAL NOT NULL,
  PRIMARY KEY (grp, seq));
CREATE TABLE IF NOT EXISTS attempts (
  grp TEXT NOT NULL, event_id TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (grp, event_id));
CREATE TABLE IF NOT EXISTS done (
  grp TEXT NOT NULL, event_id TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (grp, event_id));
CREATE TABLE IF NOT EXISTS dead (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, topic TEXT NOT NULL,
  payload BLOB NOT NULL, created REAL NOT NULL, grp TEXT NOT NULL, error TEXT NOT NULL,
  attempts INTEGER NOT NULL, buried REAL NOT NULL);
"""
_ENTRY = "e.seq, e.event_id, e.topic, e.payload, e.created, e.only_group"
_POLL = 0.25  # how often a blocked read looks for entries another process published


class SqliteStream:
    def __init__(self, path: Path, dedup_ttl: float) -> None:
        self._path = path
        self._ttl = dedup_ttl
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="surge-stream")
        self._db: sqlite3.Connection | None = None
        self._published = asyncio.Event()

    async def _run(self, work: Callable[[sqlite3.Connection], T], write: bool = True) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._call, work, write
        )

    def _call(self, work: Callable[[sqlite3.Connection], T], write: bool) -> T:
        if self._db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an acknowledged hand-over survives a crash
            db.executescript(_SCHEMA)
            self._db = db
        db = self._db
        # writers take the write lock up front (a read-then-write transaction would fail
        # with SQLITE_BUSY halfway); readers do not need it
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # also after a failed COMMIT (busy, disk full)
                db.execute("ROLLBACK")
            raise
        return result

    async def prepare(self, groups: Sequence[str]) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR IGNORE INTO cursors (grp, last_seq) VALUES (?, 0)",
                [(g,) for g in groups],
            )

        await self._run(work)

    async def publish(self, events: Sequence[Event]) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO entries (event_id, topic, payload, created) VALUES (?, ?, ?, ?)",
                [(e.id, e.topic, e.payload, e.created) for e in events],
            )

        await self._run(work)
        self._published.set()

    async def read(self, group: str, consumer: str, count: int, block: float) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            (last,) = db.execute("SELECT last_seq FROM cursors WHERE grp = ?", (group,)).fetchone()
            rows = db.execute(
                f"SELECT {_ENTRY} FROM entries e WHERE e.seq > ? ORDER BY e.seq LIMIT ?",
                (last, count),
            ).fetchall()
            if rows:
                now = time.time()
                db.executemany(
                    "INSERT INTO pending (grp, seq, consumer, delivered) VALUES (?, ?, ?, ?)",
                    [(group, row[0], consumer, now) for row in rows],
                )
                db.execute("UPDATE cursors SET last_seq = ? WHERE grp = ?", (rows[-1][0], group))
            return [_delivery(row) for row in rows]

        deadline = time.monotonic() + block
        while True:
            self._published.clear()
            deliveries = await self._run(work)
            left = deadline - time.monotonic()
            if deliveries or left <= 0:
                return deliveries
            try:
                await asyncio.wait_for(self._published.wait(), min(left, _POLL))
            except TimeoutError:
                pass

    async def claim_stale(
        self, group: str, consumer: str, min_idle: float, count: int
    ) -> list[Delivery]:
        def work(db: sqlite3.Connection) -> list[Delivery]:
            now = time.time()
            rows = db.execute(
                f"SELECT {_ENTRY} FROM pending p JOIN entries e ON e.seq = p.seq"
                " WHERE p.grp = ? AND p.delivered <= ? ORDER BY p.seq LIMIT ?",
                (group, now - min_idle, count),
            ).fetchall()
            db.executemany(
                "UPDATE pending SET consumer = ?, delivered = ? WHERE grp = ? AND seq = ?",
                [(consumer, now, group, row[0]) for row in rows],
            )
            return [_delivery(row) for row in rows]

        return await self._run(work)

    async def touch(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        await self._set_delivered(group, consumer, entries, time.time())

    async def release(self, group: str, consumer: str, entries: Sequence[str]) -> None:
        await self._set_delivered(group, consumer, entries, 0.0)

    async def _set_delivered(
        self, group: str, consumer: str, entries: Sequence[str], at: float
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE pending SET delivered = ? WHERE grp = ? AND seq = ? AND consumer = ?",
                [(at, group, int(entry), consumer) for entry in entries],
            )

        if entries:
            await self._run(work)

    async def forget(self, group: str, consumer: str) -> None:
        pass  # consumers are not registered here: a name exists only on its pending rows

    async def done(self, group: str, event_id: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT at FROM done WHERE grp = ? AND event_id = ?", (group, event_id)
            ).fetchone()
            return row is not None and row[0] > time.time() - self._ttl

        return await self._run(work, write=False)

    async def ack(self, group: str, delivery: Delivery, handled: bool = True) -> None:
        def work(db: sqlite3.Connection) -> None:
            event_id = delivery.event.id
            if handled:
                db.execute(
                    "INSERT OR REPLACE INTO done (grp, event_id, at) VALUES (?, ?, ?)",
                    (group, event_id, time.time()),
                )
            db.execute(
                "DELETE FROM pending WHERE grp = ? AND seq = ?", (group, int(delivery.entry))
            )
            db.execute("DELETE FROM attempts WHERE grp = ? AND event_id = ?", (group, event_id))

        await self._run(work)

    async def failed(self, group: str, delivery: Delivery) -> int:
        def work(db: sqlite3.Connection) -> int:
            db.execute(
                "INSERT INTO attempts (grp, event_id, n) VALUES (?, ?, 1)"
                " ON CONFLICT (grp, event_id) DO UPDATE SET n = n + 1",
                (group, delivery.event.id),
            )
            (n,) = db.execute(
                "SELECT n FROM attempts WHERE grp = ? AND event_id = ?",
                (group, delivery.event.id),
            ).fetchone()
            return int(n)

        return await self._run(work)

    async def bury(self, group: str, delivery: Delivery, error: str, attempts: int) -> None:
        def work(db: sqlite3.Connection) -> None:
            e = delivery.event
            db.execute(
                "INSERT INTO dead (event_id, topic, payload, created, grp, error, attempts,"
                " buried) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (e.id, e.topic, e.payload, e.created, group, error[:2000], attempts, time.time()),
            )
            db.execute(
                "DELETE FROM pending WHERE grp = ? AND seq = ?", (group, int(delivery.entry))
            )
            db.execute("DELETE FROM attempts WHERE grp = ? AND event_id = ?", (group, e.id))

        await self._run(work)

    async def dead_letters(self, count: int) -> list[DeadLetter]:
        def work(db: sqlite3.Connection) -> list[DeadLetter]:
            rows = db.execute(
                "SELECT seq, event_id, topic, payload, created, grp, error, attempts, buried"
                " FROM dead ORDER BY seq LIMIT ?",
                (count,),
            ).fetchall()
            return [
                DeadLetter(str(r[0]), Event(r[1], r[2], bytes(r[3]), r[4]), r[5], r[6], r[7], r[8])
                for r in rows
            ]

        return await self._run(work, write=False)

    async def replay(self, entries: Sequence[str]) -> int:
        def work(db: sqlite3.Connection) -> int:
            found = 0
            for entry in entries:
                if not entry.isdigit():
                    continue  # not an id this stream could have given: not found
                moved = db.execute(
                    "INSERT INTO entries (event_id, topic, payload, created, only_group)"
                    " SELECT event_id, topic, payload, created, grp FROM dead WHERE seq = ?",
                    (int(entry),),
                ).rowcount
                db.execute("DELETE FROM dead WHERE seq = ?", (int(entry),))
                found += moved
            return found

        found = await self._run(work)
        self._published.set()
        return found

    async def dead_count(self) -> int:
        def work(db: sqlite3.Connection) -> int:
            return int(db.execute("SELECT count(*) FROM dead").fetchone()[0])

        return await self._run(work, write=False)

    async def pending(self, group: str) -> int:
        def work(db: sqlite3.Connection) -> int:
            (held,) = db.execute("SELECT count(*) FROM pending WHERE grp = ?", (group,)).fetchone()
            (unread,) = db.execute(
                "SELECT count(*) FROM entries WHERE seq > "
                "(SELECT last_seq FROM cursors WHERE grp = ?)",
                (group,),
            ).fetchone()
            return int(held) + int(unread)

        return await self._run(work, write=False)

    async def trim(self) -> None:
        def work(db: sqlite3.Connection) -> None:
            # the oldest entry some group still needs: its pending ones, or its next unread
            (keep,) = db.execute(
                "SELECT min(k) FROM (SELECT min(seq) AS k FROM pending"
                " UNION ALL SELECT last_seq + 1 FROM cursors)"
            ).fetchone()
            if keep is not None:
                db.execute("DELETE FROM entries WHERE seq < ?", (keep,))
            db.execute("DELETE FROM done WHERE at < ?", (time.time() - self._ttl,))

        await self._run(work)

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._thread, shut)
        self._thread.shutdown(wait=True)


def _delivery(row: tuple[int, str, str, bytes, float, str | None]) -> Delivery:
    seq, event_id, topic, payload, created, only = row
    return Delivery(str(seq), Event(event_id, topic, bytes(payload), created), only)
