"""Logging for every Surge process: JSON lines (or text, for a person at a terminal),
written by a thread of their own.

A log call on the event loop only formats the message and puts the record on a queue
(logging's QueueHandler); a listener thread writes it. A slow stderr (a full pipe, a log
shipper that stalls) then never blocks the loop.

Each JSON line has `time`, `level`, `logger`, `message`, `pid`; `request_id` when the
record was logged while a request was being handled (the HTTP server sets REQUEST_ID for
handlers that wait for I/O); `error` with the traceback; and the access log's fields.

Access logs are off by default: on the hot path a line per request would cost more than
the request (SURGE_ACCESS_LOG=0.01 samples one request in a hundred; `all` logs each).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import sys
from collections.abc import Coroutine
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from queue import Empty, Full, Queue
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

import orjson

if TYPE_CHECKING:
    from surge.http.request import Request

T = TypeVar("T")

REQUEST_ID: ContextVar[bytes | None] = ContextVar("surge_request_id", default=None)

access = logging.getLogger("surge.access")

# attributes every LogRecord has: the rest were passed with `extra=` and are logged too
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_listener: QueueListener | None = None
QUEUE_SIZE = 10_000  # records waiting for the writer; past it new ones are dropped, counted
dropped = 0
_hooked = False


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["error"] = record.exc_text
        return orjson.dumps(entry, default=str).decode()


class _RequestContext(logging.Filter):
    """Stamps a record with the request being handled (runs in the logging thread's
    caller, where the context is)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__:
            rid = REQUEST_ID.get()
            if rid is not None:
                record.request_id = rid.decode("latin-1")
        return True


class _Enqueue(QueueHandler):
    def enqueue(self, record: logging.LogRecord) -> None:
        global dropped
        try:
            self.queue.put_nowait(record)
        except Full:  # stderr stalled for long: drop rather than grow without bound
            dropped += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # QueueHandler.prepare formats the record here, with the writer's formatter; only
        # the message and the traceback need computing in the caller (its arguments may
        # change after the call), the writer thread does the rest
        record.message = record.getMessage()
        record.msg, record.args = record.message, None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


class _Writer(QueueListener):
    def enqueue_sentinel(self) -> None:
        # waits for room (the stdlib's put_nowait would raise on a full queue): what is
        # queued is written first, then the thread ends
        self.queue.put(self._sentinel)  # type: ignore[attr-defined]


def shared_task(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task that works for many requests (a batch, a load several callers wait for):
    created outside the current request's context, so what it logs names no request
    rather than whichever request happened to start it."""
    return asyncio.get_running_loop().create_task(work, context=contextvars.Context())


def log_access(request: Request, status: int, elapsed: float) -> None:
    access.info(
        "%s %s %d",
        request.method,
        request.path,
        status,
        extra={
            "request_id": request.request_id.decode("latin-1"),
            "route": request.route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "client": request.client,
        },
    )


def configure_logging(level: str, fmt: str = "json", stream: IO[str] | None = None) -> None:
    """Routes every logger through the queue to `stream` (stderr); call once per process.
    A forked child gets a writer thread of its own (os.register_at_fork)."""
    global _listener, _hooked
    shutdown()
    if not _hooked:
        _hooked = True
        atexit.register(shutdown)
        # no writer thread may exist while a process forks (`--workers`): one caught
        # mid-write would leave stderr's buffer locked in the child for ever
        os.register_at_fork(
            before=_pause_writer,
            after_in_parent=_resume_writer,
            after_in_child=_resume_writer_in_child,
        )
    writer = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        writer.setFormatter(JsonFormatter())
    else:
        writer.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
        )
    queue: Queue[logging.LogRecord] = Queue(QUEUE_SIZE)
    enqueue = _Enqueue(queue)
    enqueue.addFilter(_RequestContext())
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(enqueue)
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _listener = _Writer(queue, writer)
    _listener.start()


def shutdown() -> None:
    """Writes what is queued and stops the writer thread (before os._exit, too)."""
    global _listener
    if _listener is not None:
        listener, _listener = _listener, None
        listener.stop()


def _pause_writer() -> None:
    if _listener is not None:
        _listener.stop()  # writes what is queued, then the thread ends


def _resume_writer() -> None:
    if _listener is not None:
        _listener.start()  # a new thread on the same queue


def _resume_writer_in_child() -> None:
    if _listener is not None:
        # what other threads queued while the parent forked is the parent's to write
        queue = cast("Queue[logging.LogRecord]", _listener.queue)
        try:
            while True:
                queue.get_nowait()
        except Empty:
            pass
        _listener.start()
