"""POST /rooms/{room}/messages: an application's backend publishes into a room without
holding a WebSocket (issue 18).

The caller's token must carry the role `service` (or `admin`). The body is the message's
data, any JSON value of at most the hub's `max_message` bytes; the answer is 201 with the
room and the message's sequence number, the number every subscriber sees. Rooms: `chat:`
and `user:` (a user's own room: what a backend tells one user); `sale:` rooms carry the
server's stock feed and are refused (403).
"""

from __future__ import annotations

from collections.abc import Awaitable
from urllib.parse import unquote

import orjson

from surge.auth import Authenticator
from surge.ground.web import Problem, Request, Response, json_response
from surge.protect.deadlines import within
from surge.realtime import wire
from surge.realtime.hub import Hub


class RoomPublisher:
    def __init__(self, auth: Authenticator, hub: Hub, deadline: float) -> None:
        self._auth = auth
        self._hub = hub
        self._deadline = deadline

    def handle(self, request: Request) -> Awaitable[Response]:
        user = self._auth.user(request.headers.get(b"authorization"))
        if not (user.service or user.admin):  # before the body is even looked at
            raise Problem(403, "forbidden", "the service (or admin) role is required")
        room = unquote(request.params["room"])
        if not wire.valid_room(room):
            raise Problem(400, "bad-room", wire.ROOM_RULE)
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
        return within(self._deadline, self._publish(room, data))

    async def _publish(self, room: str, data: bytes) -> Response:
        seq = await self._hub.publish(room, data)
        return json_response(201, {"room": room, "seq": seq})
