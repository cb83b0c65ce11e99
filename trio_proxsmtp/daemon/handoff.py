"""Workers: N: a worker holding its share of MaxConnections leaves new clients to the others.

N processes accept on the same listening sockets, and the kernel gives a waiting client
only to a worker that is accepting.  So a worker holding its share stops accepting, and
the kernel hands new clients to the workers with room; only a client still waiting after
HANDOFF_DELAY (every worker full, or the others stalled) is taken and refused as busy, and
then every client waiting with it, at once.
"""

from __future__ import annotations

import select
from collections.abc import Callable

import trio

__all__ = ["HANDOFF_DELAY", "leave_to_other_workers", "pending"]

# How long a worker holding its share of MaxConnections leaves a waiting client to the
# other workers before it takes it to refuse it as busy.
HANDOFF_DELAY = 1.0


async def leave_to_other_workers(
    sock: trio.socket.SocketType,
    full: Callable[[], bool],
    room: trio.lowlevel.ParkingLot,
    overflowing: bool,
) -> bool:
    """Wait while `full()` (this worker holds its share) and another worker may take the
    clients waiting on `sock`; `room` is unparked when a connection of ours ends.

    Returns when there is room, or when a client has waited HANDOFF_DELAY (to be refused
    as busy); `overflowing` (the value returned last time) then refuses every client
    still waiting at once, instead of one per HANDOFF_DELAY."""
    while full():
        if overflowing and pending(sock):
            return True
        await trio.lowlevel.wait_readable(sock)  # a client is waiting
        if not full():
            break  # room came while we waited for it
        with trio.move_on_after(HANDOFF_DELAY):
            await room.park()
        if full() and pending(sock):
            return True
        overflowing = False
    return False


def pending(sock: trio.socket.SocketType) -> bool:
    """Is a client waiting in this listening socket's queue (not yet taken by any worker)?"""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))
