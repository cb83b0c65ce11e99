"""Filter descendants that leave the filter's process group are still found and killed.

A filter runs in its own session and process group, and the group is killed when the run
ends; a descendant that calls ``setsid`` (or ``setpgid``) leaves that group and would live
on. So the proxy makes itself a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``): an
orphan is then re-parented to the proxy instead of to init, and every filter run carries a
marker in its environment, ``PROXSMTPD_FILTER_ID``, inherited by all it starts. When a run
ends, `sweep` kills every process the proxy adopted that belongs to the run (in its process
group, carrying its marker, or a child of one killed before), again and again until the
group is empty, and reaps what it killed.

Cost: the usual run ends with its group gone and either no other child of the proxy or its
`Tether` released (no process holds the pipe end every process of the run inherited), and
then nothing is scanned. Otherwise /proc is scanned (about 10 µs a process), one scan
shared by the runs ending within SCAN_INTERVAL. A daemon that closes every descriptor
while other children exist can slip past the end of its run; `sweep_forever`, which the
server runs, kills adopted processes of ended runs every few seconds.

Only the proxy's own *children* are ever signalled, so a pid cannot have been reused by an
unrelated process (a child's pid stays ours until we reap it); and a zombie is reaped only
when it is not a process Trio is waiting for (registered with `spawning`/`spawned`).

What remains without cgroups (documented in the README):

* a descendant that leaves the group *and* replaces its whole environment (``env -i``,
  a setuid program whose environment we may not read) while its group ancestors are still
  alive is not recognised once adopted; nor is one that makes itself a subreaper;
* a process handed to another service (``systemd-run``, ``at``, ``ssh``) is not ours;
* if the proxy itself is killed with SIGKILL, its adopted orphans go to init.

With Workers the supervisor is a subreaper too: a worker that dies leaves its filters (and
what it had adopted) to the supervisor, which kills all of them (`kill_adopted`: every
child of the supervisor is a worker or such an orphan), docs/behaviour.md §11.7.

Without `enable_subreaper` (not Linux, or a test) `sweep` and `kill_adopted` do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import signal
import time
from collections.abc import Container

import attrs
import trio

log = logging.getLogger("trio_proxsmtp.reaper")

PR_SET_CHILD_SUBREAPER = 36
MARKER_VARIABLE = "PROXSMTPD_FILTER_ID"
SWEEP_DEADLINE = 2.0  # seconds a sweep may take; what is left goes to the next one
SCAN_INTERVAL = 0.01  # seconds between two scans of /proc, shared by all runs
_POLL = 0.005
_TETHER_READS = 17  # 4 KiB reads: a full pipe (64 KiB by default) and its end of file

_enabled = False
_known: set[int] = set()  # children Trio is waiting for (filter group leaders)
_active: set[bytes] = set()  # the environment entries of the runs going on
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


def _entry(marker: str) -> bytes:
    return f"{MARKER_VARIABLE}={marker}".encode()


def run_started(marker: str) -> None:
    """Run ``marker`` is going on: `sweep_adopted` leaves its processes alone."""
    _active.add(_entry(marker))


def run_ended(marker: str) -> None:
    _active.discard(_entry(marker))


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


def _markers(pid: int) -> list[bytes]:
    """The MARKER_VARIABLE entries in a process's (initial) environment."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return []
    prefix = f"{MARKER_VARIABLE}=".encode()
    return [entry for entry in environ.split(b"\0") if entry.startswith(prefix)]


def _has_marker(pid: int, marker: bytes) -> bool:
    return marker in _markers(pid)


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


class Tether:
    """A pipe whose write end every process of a filter run inherits (``pass_fds``).

    When the run ends, end of file on the read end proves that no process still holds the
    write end: nothing of the run that kept its inherited descriptors survives, so the
    /proc scan can be skipped. Daemons that close every descriptor are still found by the
    scan when the group has not ended or other children exist, and by `sweep_forever`.
    """

    def __init__(self) -> None:
        self._read, self.child_fd = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self.child_fd, False)  # a filter writing to it gets EAGAIN, not stuck

    def spawned(self) -> None:
        """The child has its copy: close ours."""
        if self.child_fd >= 0:
            os.close(self.child_fd)
            self.child_fd = -1

    def released(self) -> bool:
        """No process holds the write end any more (end of file)."""
        if self.child_fd >= 0:
            return False
        # What a filter wrote into it is not our business; one still writing more than the
        # pipe holds still holds the write end, so the drain is bounded: never a busy loop.
        for _ in range(_TETHER_READS):
            try:
                if not os.read(self._read, 4096):
                    return True
            except BlockingIOError:
                return False
        return False

    def close(self) -> None:
        self.spawned()
        if self._read >= 0:
            os.close(self._read)
            self._read = -1


def _no_children() -> bool:
    """True when the proxy has no child process at all (one system call, no /proc scan)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


class _Scans:
    """One /proc scan shared by every run waiting for one, at most one per SCAN_INTERVAL.

    A scan costs about 10 µs a process on the machine; under load, many runs end within
    one interval and one scan serves them all, so the cost per message falls as the rate
    rises instead of growing with it.
    """

    def __init__(self) -> None:
        self.taken = -1  # the event number the last scan was taken after
        self.at = float("-inf")  # when (time.monotonic: trio's clock differs per trio.run)
        self.procs: dict[int, _Proc] = {}
        self.events = 0

    def event(self) -> int:
        """Something changed (a kill, a group ended): later scans must be taken after it."""
        self.events += 1
        return self.events

    async def after(self, event: int) -> dict[int, _Proc]:
        while self.taken < event:
            wait = self.at + SCAN_INTERVAL - time.monotonic()
            if wait > 0:
                await trio.sleep(wait)  # another run may take the scan meanwhile
                continue
            self.taken, self.at = self.events, time.monotonic()
            self.procs = _scan()
        return self.procs


_scans = _Scans()


def _sweep_once(
    procs: dict[int, _Proc], marker: bytes, pgid: int, killed: set[int], parents: set[int]
) -> bool:
    """One pass over our children; True if something of the run may still be around."""
    me, own_group = os.getpid(), os.getpgrp()
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
    return pending


async def sweep(marker: str, pgid: int, tether: Tether | None = None) -> list[int]:
    """Kill and reap what filter run `marker` (group `pgid`) left among our adopted orphans.

    Runs shielded with its own deadline (SWEEP_DEADLINE), so it also finishes when the run
    was cancelled. Returns the pids killed.
    """
    if not _enabled:
        return []
    killed: set[int] = set()
    parents: set[int] = set()
    token = _entry(marker)
    with trio.CancelScope(shield=True), trio.move_on_after(SWEEP_DEADLINE) as scope:
        while True:
            group = _group_exists(pgid)
            if not group and not killed and ((tether and tether.released()) or _no_children()):
                break  # nothing of the run can be left: the usual case, without a scan
            procs = await _scans.after(_scans.event())
            if not _sweep_once(procs, token, pgid, killed, parents) and not group:
                break
            await trio.sleep(_POLL)
    if scope.cancelled_caught:
        log.warning("filter processes of group %d still running after the sweep", pgid)
    return sorted(killed)


async def sweep_adopted() -> list[int]:
    """Kill adopted orphans of runs that have ended, and reap adopted zombies: one pass.

    The safety net behind `sweep` for a daemon that closed every inherited descriptor (so
    its run's end looked clean) while other children of the proxy existed.
    """
    if not _enabled:
        return []
    me, own_group = os.getpid(), os.getpgrp()
    killed = []
    for pid, proc in (await _scans.after(_scans.event())).items():
        if proc.ppid != me or pid in _known:
            continue
        if proc.state == "Z":
            if proc.pgrp != own_group and not _in_flight:
                _reap(pid)
            continue
        markers = _markers(pid)
        if markers and not _active.intersection(markers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            log.info("killed pid %d left behind by a filter that has ended", pid)
            killed.append(pid)
    return killed


async def sweep_forever(interval: float = 5.0) -> None:
    """`sweep_adopted` every ``interval`` seconds (the server runs it in its nursery)."""
    while True:
        await trio.sleep(interval)
        await sweep_adopted()


def kill_adopted(keep: Container[int], deadline: float = SWEEP_DEADLINE) -> list[int]:
    """Kill and reap every child of ours but `keep` (the supervisor's workers).

    Synchronous (the supervisor runs no Trio) and bounded by `deadline` seconds: each pass
    SIGKILLs the children not in `keep` and reaps the dead; a killed filter's own children
    come to us when it dies, so the passes go on until one finds nothing. Returns the pids
    killed.
    """
    if not _enabled:
        return []
    me, end, killed = os.getpid(), time.monotonic() + deadline, set[int]()
    while True:
        found = False
        for pid, proc in _scan().items():
            if proc.ppid != me or pid in keep:
                continue
            found = True
            if proc.state == "Z":
                _reap(pid)
            elif pid not in killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                log.warning("killed pid %d left behind by a dead worker", pid)
                killed.add(pid)
        if not found:
            return sorted(killed)
        if time.monotonic() > end:
            log.warning("processes left by a dead worker still running after the sweep")
            return sorted(killed)
        time.sleep(_POLL)
