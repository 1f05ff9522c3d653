"""The hub's bounds: every one a client could otherwise push without limit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 10_000
    max_message: int = 65_536  # bytes of one client message
    max_rooms: int = 50  # rooms per connection
    publish_rate: int = 50  # publishes a second per connection (and burst)
    send_buffer: int = 1_048_576  # queued outgoing bytes before a client is too slow
    ping_interval: float = 20.0  # seconds between pings
    ping_timeout: float = 10.0  # a peer silent this long after a ping is dropped
    history: int = 100  # messages kept per chat room for resume
    max_per_user: int = 16  # connections of one user (token) in this process
    publish_bytes: int = 65_536  # bytes a user may publish a second (burst: 4 s worth)
    fanout_threads: int = 1  # helper threads writing a fan-out beside the event loop
