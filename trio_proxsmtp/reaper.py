"""Filter descendants that leave the filter's process group are still found and killed.

A filter runs in its own session and process group, and the group is killed when the run
ends; a descendant that calls ``setsid`` (or ``setpgid``) leaves that group and would live
on. So the proxy makes itself a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``): an
orphan is then re-parented to the proxy instead of to init, and every filter run carries a
marker in its environment, ``PROXSMTPD_FILTER_ID``, inherited by all it starts. When a run
ends, `sweep` kills every process the proxy adopted that belongs to the run (in its process
group, carrying its marker, or a child of one killed before), again and again until the
group is empty, and reaps what it killed.

Only the proxy's own *children* are ever signalled, so a pid cannot have been reused by an
unrelated process (a child's pid stays ours until we reap it); and a zombie is reaped only
when it is not a process Trio is waiting for (registered with `spawning`/`spawned`).

What remains without cgroups (documented in the README):

* a descendant that leaves the group *and* replaces its whole environment (``env -i``,
  a setuid program whose environment we may not read) while its group ancestors are still
  alive is not recognised once adopted; nor is one that makes itself a subreaper;
* a process handed to another service (``systemd-run``, ``at``, ``ssh``) is not ours;
* if the proxy itself is killed with SIGKILL, its adopted orphans go to init.

Without `enable_subreaper` (not Linux, or a test) `sweep` does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import signal

import attrs
import trio

log = logging.getLogger("trio_proxsmtp.reaper")

PR_SET_CHILD_SUBREAPER = 36
MARKER_VARIABLE = "PROXSMTPD_FILTER_ID"
SWEEP_DEADLINE = 2.0  # seconds a sweep may take; what is left goes to the next one
_POLL = 0.005

_enabled = False
_known: set[int] = set()  # children Trio is waiting for (filter group leaders)
_in_flight = 0  # spawns whose pid is not known yet
_counter = itertools.count(1)


def enable_subreaper() -> bool:
    """Adopt orphaned descendants (call once at start, in every process that runs filters).

    Returns False (and `sweep` stays a no-op) where the kernel does not support it.
    """
    global _enabled
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        result = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        result = -1
    if result != 0:
        log.warning("couldn't become a child subreaper: filter descendants may escape")
        return False
    _enabled = True
    return True


def disable_subreaper() -> None:
    """Undo `enable_subreaper` (for tests)."""
    global _enabled
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
    _enabled = False


def subreaper_enabled() -> bool:
    return _enabled


def new_marker() -> str:
    """A value for MARKER_VARIABLE unique to one filter run of this process."""
    return f"{os.getpid()}.{next(_counter)}"


def spawn_starting() -> None:
    """A spawn begins whose pid is not known yet: no stray zombie is reaped meanwhile."""
    global _in_flight
    _in_flight += 1


def spawned(pid: int | None) -> None:
    """The spawn ended: Trio waits for child ``pid`` (never reap or sweep it), or it failed."""
    global _in_flight
    _in_flight -= 1
    if pid is not None:
        _known.add(pid)


def exited(pid: int) -> None:
    """Trio has reaped this child."""
    _known.discard(pid)


@attrs.frozen
class _Proc:
    ppid: int
    pgrp: int
    state: str


def _scan() -> dict[int, _Proc]:
    """Every process's parent, group and state, from /proc (about 10 µs a process)."""
    procs: dict[int, _Proc] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY)
        except OSError:
            continue
        try:
            data = os.read(fd, 1024)
        except OSError:
            continue
        finally:
            os.close(fd)
        fields = data.rpartition(b")")[2].split()
        if len(fields) >= 4:
            procs[int(name)] = _Proc(int(fields[1]), int(fields[2]), fields[0].decode())
    return procs


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def _reap(pid: int) -> bool:
    """Reap one zombie child of ours; True if it is gone."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_once(marker: bytes, pgid: int, killed: set[int], parents: set[int]) -> bool:
    """One pass over our children; True if something of the run may still be around."""
    me, own_group = os.getpid(), os.getpgrp()
    procs = _scan()
    pending = False
    for pid, proc in procs.items():
        if proc.ppid != me or pid in _known:
            continue
        if proc.state == "Z":
            # Ours to reap: killed by us, of the run's group, or an adopted orphan (it left
            # our group; no spawn whose pid we do not know yet could be this zombie).
            ours = pid in killed or proc.pgrp == pgid
            if (ours or (proc.pgrp != own_group and not _in_flight)) and not _reap(pid):
                pending = True
            continue
        if pid in killed:
            pending = True  # SIGKILLed, not dead yet
            continue
        if proc.pgrp == pgid or (pid in parents and not _in_flight) or _has_marker(pid, marker):
            # Its children are re-parented to us when it dies: remember them as the run's.
            parents.update(child for child, p in procs.items() if p.ppid == pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            log.info("killed pid %d left behind by a filter (it left the process group)", pid)
            killed.add(pid)
            pending = True
    return pending or _group_exists(pgid)


async def sweep(marker: str, pgid: int) -> list[int]:
    """Kill and reap what filter run `marker` (group `pgid`) left among our adopted orphans.

    Runs shielded with its own deadline (SWEEP_DEADLINE), so it also finishes when the run
    was cancelled. Returns the pids killed.
    """
    if not _enabled:
        return []
    killed: set[int] = set()
    parents: set[int] = set()
    token = f"{MARKER_VARIABLE}={marker}".encode()
    with trio.CancelScope(shield=True), trio.move_on_after(SWEEP_DEADLINE) as scope:
        while _sweep_once(token, pgid, killed, parents):
            await trio.sleep(_POLL)
    if scope.cancelled_caught:
        log.warning("filter processes of group %d still running after the sweep", pgid)
    return sorted(killed)
