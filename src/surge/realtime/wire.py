"""The hub's wire protocol: JSON text frames, small on purpose (docs/realtime.md).

Client -> server:
  {"op":"subscribe","room":"chat:lobby","id":1}            optional "since": SEQ to resume
  {"op":"unsubscribe","room":"chat:lobby","id":2}
  {"op":"publish","room":"chat:lobby","data":{...},"id":3}  needs a token; chat rooms only
Rooms: chat:NAME, sale:ID (the server's stock feed), user:ID (one user's own events: only
that user, or an admin, may subscribe; published by the server).
Server -> client:
  {"op":"message","room":R,"seq":N,"data":D}
  {"op":"ack","id":X,...}                                   subscribe/publish: "room", "seq"
  {"op":"error","id":X,"code":"...","message":"..."}

`id` is the client's (an integer or a short string), echoed in the ack or error; optional.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from surge.ground.rooms import USER_ROOM
from surge.ground.web import dumps

CHAT = re.compile(r"chat:[A-Za-z0-9_.\-]{1,64}")
SALE = re.compile(r"sale:[1-9][0-9]{0,17}")
ROOM_RULE = "room must be chat:NAME (A-Z a-z 0-9 _ . -, up to 64), sale:ID or user:ID"


def valid_room(room: object) -> bool:
    return isinstance(room, str) and bool(
        CHAT.fullmatch(room) or SALE.fullmatch(room) or USER_ROOM.fullmatch(room)
    )


class WireError(Exception):
    """A request the hub refuses: answered with an error frame, the connection stays."""

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Subscribe:
    room: str
    request_id: Any
    since: int | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    room: str
    request_id: Any


@dataclass(frozen=True, slots=True)
class Publish:
    room: str
    data: bytes  # the data, as compact JSON
    request_id: Any


Op = Subscribe | Unsubscribe | Publish


def parse(payload: str) -> Op:
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise WireError("bad-json", "the frame is not JSON") from None
    if not isinstance(message, dict):
        raise WireError("bad-message", "a message is a JSON object")
    request_id = message.get("id")
    if request_id is not None and not _valid_id(request_id):
        raise WireError("bad-message", "id must be an integer or a string of up to 64 characters")
    op = message.get("op")
    room = message.get("room")
    if op not in ("subscribe", "unsubscribe", "publish"):
        raise WireError("bad-op", "op must be subscribe, unsubscribe or publish", request_id)
    if not valid_room(room):
        raise WireError("bad-room", ROOM_RULE, request_id)
    assert isinstance(room, str)
    if op == "subscribe":
        since = message.get("since")
        if since is not None and (type(since) is not int or since < 0):
            raise WireError("bad-message", "since must be a sequence number >= 0", request_id)
        return Subscribe(room, request_id, since)
    if op == "unsubscribe":
        return Unsubscribe(room, request_id)
    if "data" not in message:
        raise WireError("bad-message", "publish needs data", request_id)
    try:
        data = orjson.dumps(message["data"])  # transient: room_message copies it
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (it reads deeper)
        raise WireError("bad-message", "data is nested too deeply", request_id) from None
    return Publish(room, data, request_id)


def _valid_id(value: Any) -> bool:
    if type(value) is int:
        return -(2**53) < value < 2**53
    return isinstance(value, str) and len(value) <= 64


def ack(request_id: Any, **extra: Any) -> bytes:
    return dumps({"op": "ack", "id": request_id, **extra})


def error(request_id: Any, code: str, text: str, room: str | None = None) -> bytes:
    answer = {"op": "error", "id": request_id, "code": code, "message": text}
    if room is not None:
        answer["room"] = room
    return dumps(answer)
