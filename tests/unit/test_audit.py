"""The audit log: one JSON line per event, on disk before the call returns; concurrent
events share a write and an fsync."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import orjson
import pytest

from surge.ground.events import Event
from surge.work.audit import AuditLog

pytestmark = pytest.mark.anyio


def event(i: int) -> Event:
    return Event(f"{i}.1", "order.confirmed", orjson.dumps({"order_id": i}), 1795000000.0)


async def test_concurrent_events_are_group_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), real_fsync(fd)))
    log = AuditLog(tmp_path / "audit.jsonl")
    await asyncio.gather(*(log(event(i)) for i in range(200)))
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sorted(line["data"]["order_id"] for line in lines) == list(range(200))
    assert lines[0]["at"] == "2026-11-18T11:06:40Z" and lines[0]["topic"] == "order.confirmed"
    assert 1 <= len(syncs) <= 3  # not one per line
    await log(event(200))  # a later event gets a write of its own, and returns once on disk
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 201
    await log.close()


async def test_a_payload_that_is_not_json_fails_that_event_only(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    bad = Event("9.1", "order.confirmed", b"not json", 1.0)
    outcomes = await asyncio.gather(log(event(1)), log(bad), return_exceptions=True)
    assert outcomes[0] is None and isinstance(outcomes[1], orjson.JSONDecodeError)
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 1
    await log.close()
