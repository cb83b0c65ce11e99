"""MaxConnectionsPerClient counted across all workers (`Workers: N`): a shared table.

The supervisor makes the table before the first fork: an anonymous memory file
(`memfd_create`) mapped shared, so that every worker sees the same bytes.  It is an
open-addressing hash table of client addresses; a slot holds a 16-byte digest of the
address and one 32-bit count per worker, so a worker writes only its own column and a
dead worker's connections are found by its column alone.

Every read-and-update holds a POSIX record lock on the whole file (`fcntl.lockf`).
Such a lock belongs to the process, so it excludes the other workers and the supervisor
(each inherits the descriptor, not the lock), and the kernel drops it when its holder
dies: a SIGKILLed worker never leaves the table locked.  The lock is held for a few
microseconds (one probe sequence, no I/O), so taking it in the event loop is cheaper than
any hand-off.  Why not the supervisor as an anvil: it waits for signals with
`sigtimedwait`, and a round trip over a socket per connection would put its scheduling
in every accept (docs/architecture.md, "Workers and what they share").

Admission's decision stays pure (admission.py): `add_if` calls it under the lock with the
address's count over all workers.  When a worker dies the supervisor calls `clear_worker`
before it starts the replacement (workers.py `on_worker_exit`).

Sized at start-up for twice `MaxConnections` addresses (at least 4096): the workers'
shares of MaxConnections add up to it, so it can hold every admitted address.  Only a
reload that raises MaxConnections far can fill it; an address that finds no slot then is
admitted uncounted (failing open, logged once), never refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import struct
from collections.abc import Callable, Iterator

from trio_proxsmtp.common.log import LOGGER_NAME

__all__ = ["ClientTable", "table_capacity"]

log = logging.getLogger(LOGGER_NAME)

_KEY = 16  # bytes of an address's digest
_EMPTY = bytes(_KEY)
_MIN_CAPACITY = 4096


def table_capacity(max_connections: int) -> int:
    """Slots for `max_connections` addresses: a power of two, at most half full."""
    need = max(_MIN_CAPACITY, 2 * max_connections)
    return 1 << (need - 1).bit_length()


def _digest(client: str) -> bytes:
    key = hashlib.blake2b(client.encode(), digest_size=_KEY).digest()
    return key if key != _EMPTY else b"\x01" + key[1:]


class ClientTable:
    """Open connections per client address and per worker, shared by forked workers."""

    def __init__(self, workers: int, capacity: int) -> None:
        if capacity & (capacity - 1) or capacity < 1:
            raise ValueError(f"capacity must be a power of two, not {capacity}")
        self.workers = workers
        self.capacity = capacity
        self._counts = struct.Struct(f"={workers}I")
        self._slot = _KEY + self._counts.size
        self._fd = os.memfd_create("proxsmtpd-clients", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, capacity * self._slot)
        self._map = mmap.mmap(self._fd, capacity * self._slot, mmap.MAP_SHARED)
        self._full_logged = False

    def close(self) -> None:
        """Unmap and close (the supervisor, once every worker is gone)."""
        self._map.close()
        os.close(self._fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    # -- the slots (under the lock) -------------------------------------------------------

    def _key(self, index: int) -> bytes:
        start = index * self._slot
        return self._map[start : start + _KEY]

    def _row(self, index: int) -> list[int]:
        return list(self._counts.unpack_from(self._map, index * self._slot + _KEY))

    def _write(self, index: int, key: bytes, row: list[int]) -> None:
        start = index * self._slot
        self._map[start : start + _KEY] = key
        self._counts.pack_into(self._map, start + _KEY, *row)

    def _find(self, key: bytes) -> tuple[int | None, int | None]:
        """(the slot holding `key`, or None; the first empty slot on its path, or None)."""
        index = int.from_bytes(key[:8], "little") & (self.capacity - 1)
        for _ in range(self.capacity):
            found = self._key(index)
            if found == key:
                return index, None
            if found == _EMPTY:
                return None, index
            index = (index + 1) & (self.capacity - 1)
        return None, None

    def _delete(self, index: int) -> None:
        """Empty slot `index`, moving back the entries after it whose probe path crossed it
        (linear probing's deletion without tombstones)."""
        mask = self.capacity - 1
        hole = index
        self._write(hole, _EMPTY, [0] * self.workers)
        index = (hole + 1) & mask
        while (key := self._key(index)) != _EMPTY:
            home = int.from_bytes(key[:8], "little") & mask
            # The entry may fill the hole if its home is not cyclically in (hole, index].
            if (index - home) & mask >= (index - hole) & mask:
                self._write(hole, key, self._row(index))
                self._write(index, _EMPTY, [0] * self.workers)
                hole = index
            index = (index + 1) & mask

    # -- the interface ----------------------------------------------------------------------

    def held(self, client: str) -> int:
        """The connections `client` holds over all workers."""
        with self._locked():
            index, _ = self._find(_digest(client))
            return 0 if index is None else sum(self._row(index))

    def add_if(self, worker: int, client: str, allowed: Callable[[int], bool]) -> bool:
        """Count one more connection of `client` on `worker` if `allowed(held)`, where
        `held` is its count over all workers; False when refused.  Atomic across workers."""
        key = _digest(client)
        with self._locked():
            index, empty = self._find(key)
            row = [0] * self.workers if index is None else self._row(index)
            if not allowed(sum(row)):
                return False
            if index is None:
                if empty is None:
                    if not self._full_logged:
                        log.warning(
                            "MaxConnectionsPerClient: the shared table is full (%d addresses);"
                            " admitting addresses uncounted until a restart",
                            self.capacity,
                        )
                        self._full_logged = True
                    return True
                index = empty
            row[worker] += 1
            self._write(index, key, row)
            return True

    def remove(self, worker: int, client: str) -> None:
        """One connection of `client` on `worker` has ended."""
        with self._locked():
            index, _ = self._find(_digest(client))
            if index is None:
                return  # admitted uncounted (table full)
            row = self._row(index)
            row[worker] = max(0, row[worker] - 1)
            if any(row):
                self._counts.pack_into(self._map, index * self._slot + _KEY, *row)
            else:
                self._delete(index)

    def clear_worker(self, worker: int) -> int:
        """Forget every connection of a dead `worker`; how many there were."""
        cleared = 0
        with self._locked():
            index = 0
            while index < self.capacity:
                if self._key(index) != _EMPTY:
                    row = self._row(index)
                    if row[worker]:
                        cleared += row[worker]
                        row[worker] = 0
                        if not any(row):
                            self._delete(index)
                            continue  # another entry may have moved into this slot
                        self._counts.pack_into(self._map, index * self._slot + _KEY, *row)
                index += 1
        return cleared
