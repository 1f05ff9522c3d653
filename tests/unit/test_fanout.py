"""The fan-out writer: every socket gets the frame once, in whole or reported short."""

from __future__ import annotations

import socket
from array import array
from dataclasses import dataclass

import pytest

from surge.realtime._sendmany import send_many
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


def test_send_many_reports_full_sockets_and_skips_dead_descriptors() -> None:
    pairs = _pairs(3)
    full = pairs[1][0]
    full.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        while True:
            full.send(b"x" * 4096)
    except BlockingIOError:
        pass
    dead = socket.socket()
    dead_fd = dead.fileno()
    dead.close()  # EBADF: skipped like a reset peer
    try:
        fds = array("i", [pairs[0][0].fileno(), full.fileno(), dead_fd, pairs[2][0].fileno()])
        assert send_many(fds, b"frame", 0, 4) == [(1, 0)]
        assert pairs[0][1].recv(10) == b"frame"
        assert pairs[2][1].recv(10) == b"frame"
        assert send_many(array("i"), b"frame", 0, 0) == []
        with pytest.raises(IndexError):
            send_many(fds, b"frame", 2, 5)
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_send_many_wants_an_array_of_c_ints() -> None:
    with pytest.raises(TypeError):
        send_many(b"\x03\x00\x00\x00", b"frame", 0, 1)  # type: ignore[arg-type]
