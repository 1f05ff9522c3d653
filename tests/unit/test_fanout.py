"""The fan-out writer: every socket gets the frame once, in whole or reported short."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from surge.realtime.fanout import FanOut


@dataclass
class Target:
    fd: int


def _pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    pairs = [socket.socketpair() for _ in range(count)]
    for ours, _ in pairs:
        ours.setblocking(False)
    return pairs


def test_every_socket_gets_the_frame_from_several_threads() -> None:
    fanout = FanOut(helpers=2)
    pairs = _pairs(900)  # 3 shares of 300: the loop's thread and both helpers write
    try:
        frame = b"\x81\x05hello"
        assert fanout.write([Target(ours.fileno()) for ours, _ in pairs], frame) == []
        for _, theirs in pairs:
            assert theirs.recv(100) == frame
    finally:
        fanout.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_a_full_socket_is_reported_with_what_it_took() -> None:
    fanout = FanOut(helpers=1)
    pairs = _pairs(600)
    full_ours = pairs[7][0]
    full_ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        while True:  # fill it up
            full_ours.send(b"x" * 4096)
    except BlockingIOError:
        pass
    gone_theirs = pairs[400][1]
    gone_theirs.close()  # a peer that left: skipped, no error
    try:
        targets = [Target(ours.fileno()) for ours, _ in pairs]
        short = fanout.write(targets, b"frame")
        assert short == [(targets[7], 0)]
        for index, (_, theirs) in enumerate(pairs):
            if index not in (7, 400):
                assert theirs.recv(100) == b"frame"
    finally:
        fanout.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_few_targets_stay_on_the_calling_thread() -> None:
    fanout = FanOut(helpers=3)
    pairs = _pairs(10)
    try:
        assert fanout.write([Target(ours.fileno()) for ours, _ in pairs], b"x") == []
        assert all(theirs.recv(10) == b"x" for _, theirs in pairs)
    finally:
        fanout.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
