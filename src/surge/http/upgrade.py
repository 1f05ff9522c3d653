"""Switching protocols: whether a handler's `Upgrade` can be made on its connection, and
handing the connection over to the new protocol (the WebSocket hub's) once it is.

The switch happens right after the parser reports the upgrade (`HttpParserUpgrade`,
after the request that asked for it), so only the request the parser has just read can
switch: one queued behind another request is past the parser, and the bytes that
followed it were not kept.
"""

from __future__ import annotations

import asyncio

from surge.ground.web import Request, Response, Upgrade, problem_response

NOT_AN_UPGRADE = problem_response(
    426,
    "upgrade-required",
    "send Connection: Upgrade and Upgrade: websocket",
    (("upgrade", "websocket"),),
)
NO_UPGRADE_NOW = problem_response(
    503, "shutting-down", "server is shutting down", (("retry-after", "1"),)
)
PIPELINED_UPGRADE = problem_response(
    400, "bad-request", "an upgrade must be the only request in flight on its connection"
)


def refused(request: Request, alone: bool, closing: bool) -> Response | None:
    """The answer to a handler's `Upgrade` when its connection cannot switch; None: it
    can. `alone`: `request` is the one the parser has just read, and the connection stays
    open after it; `closing`: the server is shutting down."""
    if not request.upgrade or request.method != "GET":  # llhttp's reading decides
        return NOT_AN_UPGRADE
    if not alone:
        return PIPELINED_UPGRADE
    if closing:
        return NO_UPGRADE_NOW
    return None


def hand_over(transport: asyncio.Transport, upgrade: Upgrade, rest: bytes) -> None:
    """Writes the upgrade's answer (101) and gives `transport` to its protocol, with
    `rest`: the bytes read after the request."""
    transport.write(upgrade.head + b"\r\n")
    transport.set_protocol(upgrade.protocol)
    upgrade.protocol.connection_made(transport)
    if rest:
        upgrade.protocol.data_received(rest)
