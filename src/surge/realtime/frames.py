"""Server-to-client WebSocket frames (RFC 6455), encoded once and written to every
subscriber as they are.

Frames a server sends are not masked, so one message's frame is the same bytes for every
connection: a fan-out to 10,000 subscribers is one encoding and 10,000 writes. wsproto
(which reads the clients' frames, see connection.py) encodes per connection only, hence
these few lines.
"""

from __future__ import annotations

import base64
import hashlib
import struct

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

TEXT, PING = 0x1, 0x9


def frame(opcode: int, payload: bytes) -> bytes:
    """One final (FIN) frame, unmasked."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return head + payload


def text(payload: bytes) -> bytes:
    return frame(TEXT, payload)


PING_FRAME = frame(PING, b"")


def accept_key(client_key: bytes) -> bytes:
    """Sec-WebSocket-Accept for the client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(client_key + _GUID).digest())


def valid_client_key(client_key: bytes | None) -> bool:
    """A Sec-WebSocket-Key is 16 random bytes, base64-encoded (24 characters)."""
    if client_key is None or len(client_key) != 24:
        return False
    try:
        return len(base64.b64decode(client_key, validate=True)) == 16
    except ValueError:
        return False
