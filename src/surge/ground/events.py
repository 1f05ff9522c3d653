"""Events on their way from the outbox to the consumers (surge.work)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox row on its way to the consumers. `id` is unique for ever (the row id
    joined with its creation time: a database that is emptied may hand out a row id
    again, and consumers deduplicate on this)."""

    id: str
    topic: str
    payload: bytes  # JSON
    created: float  # Unix time the order was committed


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event handed to one consumer group; stays pending until acknowledged."""

    entry: str  # the stream's id of the entry
    event: Event
    only: str | None = None  # a replayed dead letter goes to this group alone


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry: str
    event: Event
    group: str
    error: str
    attempts: int
    buried: float  # Unix time
