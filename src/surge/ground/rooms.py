"""How a room's messages get their sequence numbers, their history and every process.

`publish` gives the message the room's next sequence number, keeps it in the room's
history (the last `keep`), and hands it to every process's `deliver(room, seq, payload)`,
where `payload` is the finished message (`room_message`), encoded once, by whoever
numbered it. With Redis this is one Lua script: INCR, RPUSH + LTRIM, PUBLISH, atomic, so
numbers, history and delivery order agree across processes and pods. Without Redis it is
the same in this process.

Pub/sub keeps nothing: a process whose subscription dropped misses what was published
meanwhile; its clients resume from the history (`since`), docs/realtime.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Protocol

Deliver = Callable[[str, int, bytes], None]
# A user's own room, `user:ID`: only that user (or an admin) may subscribe, the server and
# backends publish. Room names are written into messages unescaped (`room_message`), so a
# user id with other characters than these has no room.
USER_ROOM = re.compile(r"user:[A-Za-z0-9_.@\-]{1,64}")


def user_room(user_id: str) -> str | None:
    """The room of `user_id`, or None if its id cannot name one."""
    room = "user:" + user_id
    return room if USER_ROOM.fullmatch(room) else None


ROOM_SHARE = 16  # a room's history may hold this fraction of the whole history budget


def room_message(room: str, seq: int, data: bytes) -> bytes:
    """A room's message as clients get it (docs/realtime.md; the Redis backplane's Lua
    builds the same bytes). Built by concatenation: `data` is JSON already and the room
    name was validated (nothing to escape), so the payload is encoded once, by the
    publisher."""
    return b'{"op":"message","room":"%s","seq":%d,"data":%s}' % (room.encode(), seq, data)


class Backplane(Protocol):
    async def start(self, deliver: Deliver, lost: Callable[[], None]) -> None:
        """`deliver` gets every message; `lost` is called when messages may have been
        missed (the link to the other processes was re-established)."""
        ...

    async def publish(self, room: str, data: bytes, keep: int) -> int:
        """Numbers, keeps and distributes a message; returns its sequence number."""
        ...

    async def history(self, room: str) -> tuple[list[tuple[int, bytes]], int]:
        """The kept messages (oldest first, with their numbers) and the latest number."""
        ...

    async def share_counts(self, counts: Mapping[str, int]) -> None:
        """This process's subscribers per room (0: none any more), for `others`."""
        ...

    async def others(self, room: str) -> int:
        """The subscribers of `room` in the other processes, as they last shared them."""
        ...
