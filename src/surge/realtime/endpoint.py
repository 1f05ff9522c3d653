"""GET /ws: the WebSocket handshake, checked before anything is switched.

Refused with a problem+json answer, never upgraded: not a WebSocket upgrade (426), a bad
key or version (400/426), an Origin not allowed (403), a bad token (401), the user at its
connection limit (429), the process at its connection limit or shutting down (503,
Retry-After). A token (`?token=JWT` or
`Authorization: Bearer`) is optional: anonymous clients may subscribe, not publish.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from surge.auth import Authenticator, User
from surge.ground.web import Problem, Request, Response, Upgrade
from surge.realtime import frames
from surge.realtime.connection import WsConnection
from surge.realtime.hub import Hub


class Endpoint:
    def __init__(self, hub: Hub, auth: Authenticator, origins: str) -> None:
        self._hub = hub
        self._auth = auth
        self._origins = {o.strip().lower().encode() for o in origins.split(",") if o.strip()}

    def handle(self, request: Request) -> Response | Upgrade:
        headers = request.headers
        if b"websocket" not in _tokens(headers.get(b"upgrade")) or b"upgrade" not in _tokens(
            headers.get(b"connection")
        ):
            raise Problem(
                426,
                "upgrade-required",
                "GET /ws is a WebSocket endpoint: send Upgrade: websocket",
                (("upgrade", "websocket"),),
            )
        if headers.get(b"sec-websocket-version") != b"13":
            raise Problem(
                426,
                "websocket-version",
                "WebSocket version 13 only",
                (("sec-websocket-version", "13"),),
            )
        key = headers.get(b"sec-websocket-key")
        if not frames.valid_client_key(key):
            raise Problem(400, "bad-websocket-key", "Sec-WebSocket-Key must be 16 bytes, base64")
        origin = headers.get(b"origin")
        if self._origins and (origin is None or origin.lower() not in self._origins):
            raise Problem(403, "origin-not-allowed", "this Origin may not open /ws")
        who = self._user(request)
        user = None if who is None else who.id
        if user is not None and not self._hub.user_has_room(user):
            self._hub.stats["refused"] += 1
            raise Problem(
                429,
                "user-connection-limit",
                f"at most {self._hub.limits.max_per_user} WebSocket connections per user",
                (("retry-after", "1"),),
            )
        if not self._hub.has_room():
            self._hub.stats["refused"] += 1
            raise Problem(
                503,
                "too-many-connections",
                "this process is at its WebSocket connection limit or shutting down",
                (("retry-after", "1"),),
            )
        assert key is not None
        head = (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: " + frames.accept_key(key) + b"\r\n"
        )
        if who is None:
            return Upgrade(head, WsConnection(self._hub, None))
        return Upgrade(head, WsConnection(self._hub, who.id, who.admin, who.expires))

    def _user(self, request: Request) -> User | None:
        header = request.headers.get(b"authorization")
        if header is None and "token=" in request.query:
            # an empty ?token= is a bad token (401), not an anonymous client
            tokens = parse_qs(request.query, keep_blank_values=True).get("token")
            if tokens:
                header = b"Bearer " + tokens[0].encode()
        if header is None:
            return None  # anonymous: may subscribe only
        return self._auth.user(header)


def _tokens(value: bytes | None) -> set[bytes]:
    """The comma-separated tokens of a header field, lower-cased (`Upgrade: websocket`,
    `Connection: keep-alive, Upgrade`): compared whole, not as substrings."""
    if not value:
        return set()
    return {token.strip().lower() for token in value.split(b",")}
