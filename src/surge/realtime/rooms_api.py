"""The rooms over HTTP (issue 18): an application's backend publishes into a room without
holding a WebSocket, and anyone may ask how many subscribers a room has.

POST /rooms/{room}/messages:
The caller's token must carry the role `service` (or `admin`). The body is the message's
data, any JSON value of at most the hub's `max_message` bytes; the answer is 201 with the
room and the message's sequence number, the number every subscriber sees. Rooms: `chat:`
and `user:` (a user's own room: what a backend tells one user); `sale:` rooms carry the
server's stock feed and are refused (403).

GET /rooms/{room}: `{"room", "subscribers"}` across processes: this process's count now,
the others' as of their last report (every 5 s: surge.realtime.hub). A `user:` room's
count says whether that user is connected: only they, an admin or a service may ask.
"""

from __future__ import annotations

from collections.abc import Awaitable

import orjson

from surge.auth import Authenticator
from surge.ground.web import Problem, Request, Response, json_response
from surge.protect.deadlines import within
from surge.realtime import wire
from surge.realtime.hub import Hub


class RoomsApi:
    def __init__(self, auth: Authenticator, hub: Hub, deadline: float) -> None:
        self._auth = auth
        self._hub = hub
        self._deadline = deadline

    def publish(self, request: Request) -> Awaitable[Response]:
        user = self._auth.user(request.headers.get(b"authorization"))
        if not (user.service or user.admin):  # before the body is even looked at
            raise Problem(403, "forbidden", "the service (or admin) role is required")
        room = _room(request)
        if room.startswith("sale:"):
            raise Problem(403, "forbidden", "sale rooms carry the server's stock feed only")
        if len(request.body) > self._hub.limits.max_message:
            raise Problem(
                413, "body-too-large", f"a message is at most {self._hub.limits.max_message} bytes"
            )
        try:
            # normalized (compact) and proven JSON: it is written into messages unescaped
            data = orjson.dumps(orjson.loads(request.body))
        except orjson.JSONDecodeError:
            raise Problem(400, "bad-json", "the body must be JSON: the message's data") from None
        except orjson.JSONEncodeError:  # nested deeper than orjson writes
            raise Problem(400, "bad-json", "the data is nested too deeply") from None
        if len(data) > self._hub.limits.max_message:  # re-encoded: `1e15` is `1000000000000000.0`
            raise Problem(
                413, "body-too-large", f"a message is at most {self._hub.limits.max_message} bytes"
            )
        return within(self._deadline, self._publish(room, data))

    async def _publish(self, room: str, data: bytes) -> Response:
        seq = await self._hub.publish(room, data)
        return json_response(201, {"room": room, "seq": seq})

    def presence(self, request: Request) -> Awaitable[Response]:
        room = _room(request)
        if room.startswith("user:"):
            user = self._auth.user(request.headers.get(b"authorization"))
            if not (user.admin or user.service or user.id == room[5:]):
                raise Problem(403, "forbidden", "a user's room is that user's (or an admin's)")
        return within(self._deadline, self._presence(room))

    async def _presence(self, room: str) -> Response:
        return json_response(200, {"room": room, "subscribers": await self._hub.subscribers(room)})


def _room(request: Request) -> str:
    """The path's room (the router %-decoded it once: `chat%3Alobby`; not twice)."""
    room = request.params["room"]
    if not wire.valid_room(room):
        raise Problem(400, "bad-room", wire.ROOM_RULE)
    return room
