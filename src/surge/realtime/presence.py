"""How many subscribers a room has across processes, kept cheaply: each process reports
its own rooms' counts every PRESENCE_EVERY seconds through the backplane (one write per
room with subscribers, none per connection), and a reader adds this process's count now
to the others' last reports. A count is thus at most PRESENCE_EVERY seconds stale."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from surge.ground.rooms import Backplane

log = logging.getLogger("surge.realtime")

PRESENCE_EVERY = 5  # seconds between this process's reports of its rooms' subscribers


class Presence:
    def __init__(
        self,
        backplane: Backplane,
        count: Callable[[str], int],
        rooms: Callable[[], Collection[str]],
    ) -> None:
        self._backplane = backplane
        self._count = count  # this process's subscribers of a room
        self._rooms = rooms  # the rooms with subscribers here
        self._shared: dict[str, int] = {}  # what the last report said

    async def share(self) -> None:
        """Every room with subscribers here, and those that lost their last one since the
        previous report (0); bounded by the rooms, not the connections."""
        counts = {room: self._count(room) for room in self._rooms()}
        gone = {room: 0 for room in self._shared if room not in counts}
        try:
            await self._backplane.share_counts({**counts, **gone})
        except Exception as exc:  # Redis down: presence is stale meanwhile, nothing else
            log.warning("presence not shared: %s", exc)
            return
        self._shared = counts
