"""Ending a TCP connection so that the kernel lets go of it.

A plain close or abort leaves the kernel sending what is queued (up to its send buffer,
megabytes) to a client that may never read it, for as long as the client keeps its
socket: a connection whose peer has not read its answers is reset instead. Used by the
HTTP engine and by the WebSocket connections it hands over.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def reset(transport: asyncio.BaseTransport) -> None:
    """Aborts `transport` with a TCP reset (SO_LINGER 0), freeing the kernel's buffers."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        except OSError:
            pass
    transport.abort()  # type: ignore[attr-defined]


def end(transport: asyncio.Transport) -> None:
    """Closes a connection we are done with; resets it instead when the kernel still holds
    answers the client has not read (it would keep them, in an orphaned socket, for a
    client that may never read)."""
    if unsent(transport):
        reset(transport)
    else:
        transport.close()


def unsent(transport: asyncio.BaseTransport) -> int:
    """Bytes the kernel holds for the peer, not yet sent (or not acknowledged)."""
    sock = transport.get_extra_info("socket")
    try:
        queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (AttributeError, OSError):
        return 0
    return int(struct.unpack("i", queued)[0])


def linger(transport: asyncio.WriteTransport) -> None:
    """Ends our half of the connection once what is queued is out (FIN) and goes on
    reading, so that input the client sent and we never read does not make the kernel
    reset the connection before our answer arrives; whoever owns the connection cuts it
    later."""
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()
