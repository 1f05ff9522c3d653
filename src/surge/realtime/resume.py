"""A subscriber catching up on a room's history before it joins the room proper: a sale
room's latest state, or what a resuming client missed (`since`), with the live messages
that arrived meanwhile held back and sent after it, each once and in order."""

from __future__ import annotations

from typing import Any

from surge.realtime import wire
from surge.realtime.connection import WsConnection


class Joining:
    """A subscriber catching up on a room's history: live messages are `held` until the
    history is sent; then those numbered up to `floor` (sent already) are dropped."""

    __slots__ = ("floor", "held", "request_id")

    def __init__(self, request_id: Any) -> None:
        self.request_id = request_id
        self.held: list[tuple[int, bytes]] | None = []
        self.floor = 0


def replay(
    conn: WsConnection,
    room: str,
    since: int | None,
    joining: Joining,
    kept: list[tuple[int, bytes]],
    latest: int,
) -> None:
    """Sends what `conn` missed of `room` (`kept`: the history, `latest`: its newest
    number), then the live messages held meanwhile; tells of gaps with `resync`."""
    if since is None:  # a sale room: its latest state only
        missed, last = kept[-1:], 0
    else:
        missed, last = [(s, p) for s, p in kept if s > since], since
        first = kept[0][0] if kept else latest + 1
        if since > latest:
            conn.reply(
                wire.error(
                    joining.request_id,
                    "resync",
                    f"{room} is numbered anew (now at {latest}, you saw {since}): load "
                    "the room's state anew",
                )
            )
            last = 0
        elif since < latest and first > since + 1:
            conn.reply(
                wire.error(
                    joining.request_id,
                    "resync",
                    f"messages {since + 1}..{first - 1} of {room} are no longer kept: "
                    "load the room's state anew; what is kept follows",
                )
            )
    for seq, payload in missed:
        conn.reply(payload)
        last = seq
    for seq, frame in joining.held or ():
        if seq > last:
            conn.send(frame)
            last = seq
    # Live messages may still be on their way through pub/sub with numbers the history
    # already had: until one past everything sent arrives, the subscriber stays here
    # and those are dropped (`_deliver`), then it joins the room proper.
    joining.held = None
    joining.floor = max(last, latest)
