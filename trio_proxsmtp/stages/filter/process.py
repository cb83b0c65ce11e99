"""A filter's process and its process group: the spawn in a new session, in the Trio thread
(`_spawn`), the wait on a pidfd (`FilterProcess`), and the kill of the whole group on
timeout, on cancellation and after every run (B3), descendants that left the group
included (reaper.py).  Each filter is reaped through its own handle, never
``waitpid(-1)`` (B4).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping

import trio

from trio_proxsmtp.stages import reaper

__all__ = ["KILL_GRACE", "FilterProcess", "run_and_kill_group"]

KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL to the group


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, sig)


async def _kill_group(pgid: int) -> None:
    """On cancellation: SIGTERM the group, SIGKILL it after a grace."""
    _signal_group(pgid, signal.SIGTERM)
    await trio.sleep(KILL_GRACE)
    _signal_group(pgid, signal.SIGKILL)


class FilterProcess:
    """A started filter: its pid (= its process group), its pipes, its exit status.

    `wait` waits on a pidfd (the event loop, no thread), then reaps the child itself.
    """

    def __init__(
        self,
        pid: int,
        stdin: trio.lowlevel.FdStream | None,
        stdout: trio.lowlevel.FdStream | None,
        stderr: trio.lowlevel.FdStream,
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None
        self._wait_lock = trio.Lock()
        try:
            self._pidfd = os.pidfd_open(pid)
        except (OSError, AttributeError):  # kernel before 5.3: poll waitpid instead
            self._pidfd = -1

    async def wait(self) -> int:
        """The exit status (negative: the signal), once the child has exited."""
        async with self._wait_lock:  # one waiter on the pidfd at a time; the rest queue
            while self.returncode is None:
                if self._pidfd >= 0:
                    await trio.lowlevel.wait_readable(self._pidfd)
                done, status = os.waitpid(self.pid, os.WNOHANG)
                if done == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
                    self._close_pidfd()
                elif self._pidfd < 0:
                    await trio.sleep(0.01)
        return self.returncode

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


def _spawn(
    argv: list[str], stdio: int, env: Mapping[str, str], pass_fds: tuple[int, ...]
) -> FilterProcess:
    """Start ``argv`` in a new session (its own process group), in this thread.

    `subprocess.Popen` takes its vfork path here (no preexec_fn, no uid/gid change): the
    parent is suspended only until the child has called exec, and an exec failure is an
    OSError. Descriptors other than the pipes and ``pass_fds`` are closed in the child.
    ``stdio`` (PIPE or DEVNULL) is used for stdin and stdout; stderr is always a pipe.
    """
    ours: list[int] = []  # our ends of the pipes, closed if the spawn fails
    theirs: list[int] = []  # the child's ends, closed here once it has them
    try:
        child: list[int] = []  # stdin, stdout, stderr
        for index in range(3):
            if index == 2 or stdio == subprocess.PIPE:
                read, write = os.pipe()  # both close-on-exec: Popen dup2s the child's end
                ours.append(write if index == 0 else read)
                theirs.append(read if index == 0 else write)
                child.append(theirs[-1])
            else:
                child.append(subprocess.DEVNULL)
        popen = subprocess.Popen(
            argv,
            stdin=child[0],
            stdout=child[1],
            stderr=child[2],
            env=env,
            start_new_session=True,
            pass_fds=pass_fds,
        )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    streams = [trio.lowlevel.FdStream(fd) for fd in ours]
    stderr = streams.pop()
    stdin, stdout = streams if streams else (None, None)
    # Popen's own bookkeeping is not used: the child is reaped by FilterProcess.wait.
    popen.returncode = 0
    return FilterProcess(popen.pid, stdin, stdout, stderr)


async def run_and_kill_group(
    argv: list[str],
    stdio: int,
    env: Mapping[str, str],
    marker: str,
    *,
    task_status: trio.TaskStatus[FilterProcess] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start the filter (`_spawn`) and wait for it; on cancellation SIGTERM its group and
    SIGKILL it after KILL_GRACE, still waiting for it to exit; then SIGKILL what is left of
    the group (B3), always, and what left the group (reaper.sweep), before anyone waits
    for the pipes' end.
    """
    tether = reaper.Tether() if reaper.subreaper_enabled() else None
    pgid: int | None = None
    reaper.run_started(marker)
    reaper.spawn_starting()
    try:
        try:
            process = _spawn(argv, stdio, env, () if tether is None else (tether.child_fd,))
        except BaseException:
            reaper.spawned(None)
            raise
        pgid = process.pid
        reaper.spawned(pgid)
        if tether is not None:
            tether.spawned()
        task_status.started(process)
        try:
            await process.wait()
        except BaseException:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as killer:
                    killer.start_soon(_kill_group, pgid)
                    await process.wait()
                    killer.cancel_scope.cancel()
            raise
    finally:
        try:
            if pgid is not None:
                reaper.exited(pgid)
                _signal_group(pgid, signal.SIGKILL)
                await reaper.sweep(marker, pgid, tether)
        finally:
            reaper.run_ended(marker)
            if tether is not None:
                tether.close()
