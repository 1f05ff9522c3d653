"""JSON lines, the request id from the context, a writer thread that never blocks the
caller, and a forked child that still logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest

from surge import logs
from surge.ground.tasks import shared_task


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure_logging("debug", "json", stream)
    yield stream
    logs.shutdown()
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    logs.shutdown()  # writes what is queued
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_its_extras_and_traceback(captured: io.StringIO) -> None:
    log = logging.getLogger("surge.test")
    log.info("sold %d of %s", 3, "sale 7", extra={"sale_id": 7})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    first, second = lines(captured)
    assert first["message"] == "sold 3 of sale 7"
    assert (first["level"], first["logger"], first["sale_id"]) == ("info", "surge.test", 7)
    assert first["pid"] == os.getpid() and str(first["time"]).endswith("+00:00")
    assert "request_id" not in first
    assert second["level"] == "error" and "ValueError: boom" in str(second["error"])


def test_records_logged_while_handling_a_request_carry_its_id(captured: io.StringIO) -> None:
    log = logging.getLogger("surge.test")

    async def handler() -> None:
        await asyncio.sleep(0)
        log.warning("inside")

    async def main() -> None:
        token = logs.REQUEST_ID.set(b"req-42")
        task = asyncio.ensure_future(handler())  # copies the context, as the server does
        logs.REQUEST_ID.reset(token)
        log.warning("outside")
        await task

    async def batch() -> None:
        log.warning("shared")

    async def main_with_batch() -> None:
        await main()
        token = logs.REQUEST_ID.set(b"req-43")
        try:
            await shared_task(batch())  # started by one request, working for many
        finally:
            logs.REQUEST_ID.reset(token)

    asyncio.run(main_with_batch())
    by_message = {line["message"]: line for line in lines(captured)}
    assert by_message["inside"]["request_id"] == "req-42"
    assert "request_id" not in by_message["outside"]
    assert "request_id" not in by_message["shared"]


def test_a_stalled_stream_does_not_block_the_caller() -> None:
    release = threading.Event()

    class Stalled(io.StringIO):
        def write(self, text: str) -> int:
            release.wait(5)
            return super().write(text)

    stream = Stalled()
    logs.configure_logging("info", "text", stream)
    try:
        started = time.perf_counter()
        for i in range(100):
            logging.getLogger("surge.test").info("line %d", i)
        assert time.perf_counter() - started < 0.5  # the writer thread is the one stuck
    finally:
        release.set()
        logs.shutdown()
    assert stream.getvalue().count("surge.test: line") == 100


def test_a_forked_child_logs_through_a_writer_of_its_own() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as out:
        logs.configure_logging("info", "json", out)
        try:
            pid = os.fork()
            if pid == 0:
                logging.getLogger("surge.child").info("from the child")
                logs.shutdown()
                os._exit(0)
            os.waitpid(pid, 0)
        finally:
            logs.shutdown()
    with os.fdopen(read_end) as got:
        messages = [json.loads(line)["message"] for line in got.read().splitlines()]
    assert messages == ["from the child"]


def test_a_writer_that_falls_far_behind_drops_records_and_counts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()

    class Stalled(io.StringIO):
        def write(self, text: str) -> int:
            release.wait(5)
            return super().write(text)

    monkeypatch.setattr(logs, "QUEUE_SIZE", 10)
    before = logs.dropped
    stream = Stalled()
    logs.configure_logging("info", "text", stream)
    try:
        for i in range(50):
            logging.getLogger("surge.test").info("line %d", i)
        assert logs.dropped - before >= 50 - 10 - 1  # one may be in the writer's hands
    finally:
        release.set()
        logs.shutdown()
    assert stream.getvalue().count("surge.test: line") == 50 - (logs.dropped - before)


def test_no_writer_thread_lives_while_nothing_is_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle thread in every server process doubled the flash-sale winners' p99."""
    monkeypatch.setattr(logs._Writer, "IDLE", 0.05)
    stream = io.StringIO()
    logs.configure_logging("info", "text", stream)
    try:

        def writers() -> list[threading.Thread]:
            return [t for t in threading.enumerate() if t.name == "log-writer"]

        assert writers() == []
        logging.getLogger("surge.test").info("one")
        assert len(writers()) == 1
        deadline = time.monotonic() + 5
        while writers() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writers() == []  # idle: gone
        logging.getLogger("surge.test").info("two")  # and back for the next record
    finally:
        logs.shutdown()
    assert stream.getvalue().count("surge.test: ") == 2
