"""Writing one frame to thousands of sockets, on several cores at once.

A fan-out is almost all system calls: one send per subscriber, about 10 us each on
loopback (the kernel also runs the receiving side of the connection inside it), so
10,000 subscribers took 110-125 ms from one thread, no faster than the Go baseline's
single writer. The subscribers are split into shares, one sent by the event loop's
thread and the others by `helpers` more threads, at the same time. Each share is sent by
`_sendmany.send_many` (C, beside this file), which releases the GIL once for the whole
share; from Python every os.write took the GIL back, and with several writers each take
was a futex sleep and wake-up (10,000 subscribers, same run: fan-out 89-96 -> 84-91 ms,
delivery p99 112-134 -> 90-103 ms).

Handing a share to a helper while the loop's thread is still picking the subscribers
was tried and is slower (96-102 ms): the helper needs the GIL to start and to finish,
and a thread running pure Python keeps it for up to the 5 ms switch interval.

This is safe because of what the caller guarantees, and only then: every connection
handed over has nothing queued in its transport (so a direct write keeps the order), and
the event loop's thread does nothing else until every share is written (so nobody else
writes to those sockets meanwhile, and none is closed). What a socket did not take is
returned, for the caller to queue in the transport, behind the part that went out.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Protocol

from surge.realtime._sendmany import send_many


class Writable(Protocol):
    fd: int


Short = list[tuple[Writable, int]]  # a connection, and how many bytes of the frame it took


def default_helpers() -> int:
    """One helper thread per core, at most 3: with the GIL released for a whole share,
    every core sends at once (2 cores, 10,000 subscribers, same run: 1 helper 1.0x Go's
    fan-out time, 2 helpers 0.73x, 3 helpers 0.76x)."""
    return min(os.cpu_count() or 1, 3)


class FanOut:
    # Below this many sockets per thread, handing work to a thread costs more than it saves.
    MIN_SHARE = 256

    def __init__(self, helpers: int) -> None:
        self._helpers = helpers
        self._pool = (
            ThreadPoolExecutor(helpers, thread_name_prefix="surge-fanout") if helpers else None
        )

    def write(self, targets: Sequence[Writable], frame: bytes) -> Short:
        """Writes `frame` to every target; returns the targets that took only part of it."""
        count = len(targets)
        fds = array("i", [target.fd for target in targets])
        pool = self._pool
        threads = min(self._helpers + 1, count // self.MIN_SHARE)
        if pool is None or threads < 2:
            shorts = send_many(fds, frame, 0, count)
        else:
            size = -(-count // threads)
            running = [
                pool.submit(send_many, fds, frame, start, min(start + size, count))
                for start in range(size, count, size)
            ]
            try:
                shorts = send_many(fds, frame, 0, size)
            finally:
                # blocks the loop until every share is sent, even if ours failed: nobody
                # else may touch these sockets meanwhile
                wait(running)
            for done in running:
                shorts += done.result()
        return [(targets[index], sent) for index, sent in shorts]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
