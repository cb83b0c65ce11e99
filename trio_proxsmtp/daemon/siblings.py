"""With Workers, worker 0 answers /metrics, /healthz and /readyz for the whole process
(docs/behaviour.md §11.10).  Once its own sessions are drained it stays, serving only
those, until its sibling workers have drained theirs: so that a probe keeps getting its
answer (/healthz 200, /readyz 503 "draining") for as long as any worker still finishes
mail, rather than a refused connection (which a liveness probe takes for a dead process).

The siblings are the live processes with files in the multi-process metrics directory,
less this one and the supervisor (our parent, whose own counters live there too).  A dead
worker's counter files stay (prometheus.py): its pid is gone once the supervisor reaped it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from trio_proxsmtp.daemon.prometheus import MULTIPROC_ENV

__all__ = ["outlive_siblings", "sibling_pids"]

POLL_SECONDS = 0.1


def sibling_pids(directory: str | None) -> set[int]:
    """The live pids with files in `directory`, less ours and our parent's."""
    if not directory:
        return set()
    try:
        names = os.listdir(directory)
    except OSError:
        return set()
    pids = set()
    for name in names:  # prometheus-client's files: <kind>[_<mode>]_<pid>.db
        _, _, pid = name.removesuffix(".db").rpartition("_")
        if pid.isdigit():
            pids.add(int(pid))
    pids -= {os.getpid(), os.getppid()}
    return {pid for pid in pids if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone's process: not ours to judge, so still there
    return True


async def outlive_siblings(timeout: float, ended: Callable[[], bool]) -> None:
    """Return once no sibling worker is alive, `ended()` (a second stop) says so, or after
    `timeout` seconds (the siblings' own grace period bounds them anyway)."""
    directory = os.environ.get(MULTIPROC_ENV)
    with trio.move_on_after(timeout):
        while not ended() and sibling_pids(directory):
            await trio.sleep(POLL_SECONDS)
