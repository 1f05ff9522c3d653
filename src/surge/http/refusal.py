"""The refusal made before the parser: when every slot of the load shedder is taken, a
lone GET is answered 503 straight from the bytes read (surge.protect.shedder explains
why a refusal must cost as little as possible)."""

from __future__ import annotations

from surge.protect.shedder import overloaded

_RESPONSE = overloaded()
HEAD = _RESPONSE[1]
TAIL = b"\r\n" + _RESPONSE[2]
# never refused unparsed: probes and scrapes must see the server as it is
_NEVER_SHED = (b"GET /healthz", b"GET /readyz", b"GET /metrics", b"GET /openapi.json", b"GET /ws")


def lone_get(data: bytes) -> bool:
    """`data` is exactly one complete HTTP/1.1 GET with no body and no Connection: close
    (so answering it leaves the connection as it was), for a path that may be shed."""
    if not data.startswith(b"GET ") or not data.endswith(b"\r\n\r\n"):
        return False
    line_end = data.find(b"\r\n")
    return (
        data[line_end - 9 : line_end] == b" HTTP/1.1"
        and data.find(b"\r\n\r\n") == len(data) - 4
        and not data.startswith(_NEVER_SHED)
        and b"onnection: close" not in data
        and b"ONNECTION: CLOSE" not in data
    )
