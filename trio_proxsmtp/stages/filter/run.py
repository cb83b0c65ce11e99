"""Running FilterCommand (docs/behaviour.md §6) and turning its outcome into a verdict.

The filter runs in its own session, so it and everything it forks form one process group:
on timeout or cancellation the group gets SIGTERM and then SIGKILL, and after every run the
group gets SIGKILL so no background grandchild outlives the message (1.10 signalled only the
shell, B3). Each filter is reaped through its own handle, never ``waitpid(-1)`` (B4).

Changes from proxsmtpd 1.10, on purpose:

* ``FilterTimeout`` is a deadline on the whole run, not an inactivity timer.
* The reply is the last non-blank line of *all* stderr, with no 255-byte chunk artefacts
  (B21); control characters in it are replaced by spaces so a filter cannot inject reply
  lines.
* A command made only of plain words (no shell syntax, not a shell builtin) is executed
  directly, saving a ``/bin/sh`` per message; if that exec fails, it is retried through
  ``/bin/sh -c`` so the result (exit 127 and sh's message) is the same as 1.10's.
* A filter the shell cannot run (exit 126 or 127) is a local error (451), never a 5xx
  that would bounce all mail; sh's message goes to the log, not to the client.
* Exit 0 with no output at all for a non-empty message is a local error (451): it is
  almost always a broken filter (1.10 delivered an empty message).
* The output is capped (``size_limit``: the size promised to the client): past it the
  filter is killed and the verdict is a local error (451), since the message it got was
  within the limit and the filter grew it. Pipe mode stops spooling at the cap; file mode
  checks the file's size four times a second and at the end.
* RECIPIENTS over 64 KiB (an environment string cannot hold more than 128 KiB) goes to a
  0600 file named by ``RECIPIENTS_FILE`` instead; RECIPIENTS is then unset.
* Nothing in the environment can crash the run: a value exec refuses (a NUL byte) is a
  local error.
* Descendants that leave the process group are killed too (stages/reaper.py).
* The filter is started in the Trio thread (`subprocess.Popen`'s vfork path: no
  preexec_fn, no uid/gid change), not in a worker thread as `trio.run_process` does: the
  thread hand-off cost more CPU than the spawn itself (bench/spawn.py).

Knows nothing about sockets: it gets a spool and an environment and returns a
``FilterVerdict``.  Here: the run and its deadline (`run_filter`); the environment is
environment.py's, the process and its group kill process.py's, the verdict verdict.py's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping

import trio

from trio_proxsmtp.stages import reaper
from trio_proxsmtp.stages.filter.environment import move_recipients_to_file, unexecutable
from trio_proxsmtp.stages.filter.process import FilterProcess, run_and_kill_group
from trio_proxsmtp.stages.filter.verdict import (
    FilterVerdict,
    StderrTail,
    judge,
    local_error,
    too_big,
)
from trio_proxsmtp.stages.settings import FilterSpec, FilterType, direct_argv
from trio_proxsmtp.stages.spool import Spool

__all__ = ["run_filter"]

log = logging.getLogger("trio_proxsmtp.filter")
# run_filter logs through the connection's logger when given one (its lines carry its id).
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

RECEIVE_SIZE = 256 * 1024
FILE_SIZE_POLL = 0.25  # seconds between size checks of a file-mode filter's $EMAIL

WHICH_TTL = 1.0  # seconds a PATH lookup of a filter program is reused
_which_cache: dict[tuple[str, str], tuple[float, str | None]] = {}


def _which(name: str, path: str) -> str | None:
    """`shutil.which`, reused for WHICH_TTL seconds (a stat per PATH directory per message
    was about 3 % of the proxy's CPU with ``cat``). A stale answer is harmless: a program
    gone or no longer executable fails its exec and goes through sh, as an unknown one does.
    """
    now = time.monotonic()
    cached = _which_cache.get((name, path))
    if cached is not None and now - cached[0] < WHICH_TTL:
        return cached[1]
    if len(_which_cache) > 64:  # a few filter commands and PATHs: never grows unbounded
        _which_cache.clear()
    found = shutil.which(name, path=path)
    _which_cache[name, path] = (now, found)
    return found


class _Run:
    """One filter run: the process, its pipes and what came out of them."""

    def __init__(
        self,
        spec: FilterSpec,
        message: Spool,
        env: Mapping[str, str],
        log: Logger = log,
        size_limit: int | None = None,
    ) -> None:
        self.log = log
        self.spec = spec
        self.message = message
        self.input_size = message.size
        self.size_limit = size_limit
        self.env = dict(env)
        self.marker = reaper.new_marker()
        self.env[reaper.MARKER_VARIABLE] = self.marker
        self.recipients_file: str | None = None
        self.output: Spool | None = None
        self.stderr = StderrTail()
        self.failure: str | None = None
        self.process: FilterProcess | None = None

    async def start(self, nursery: trio.Nursery) -> FilterProcess:
        pipe = self.spec.mode is FilterType.PIPE
        stdio = subprocess.PIPE if pipe else subprocess.DEVNULL
        argv = direct_argv(self.spec.command)
        if argv is not None and "/" not in argv[0]:
            # Search PATH here: the child would try execve in every PATH directory. Not
            # found: sh runs it, and says "not found" with exit 127, exactly as before.
            found = _which(argv[0], self.env.get("PATH", os.defpath))
            argv = None if found is None else [found, *argv[1:]]
        if argv is not None:
            try:
                process: FilterProcess = await nursery.start(
                    run_and_kill_group, argv, stdio, self.env, self.marker
                )
            except OSError as exc:
                self.log.debug("exec %r failed (%s); retrying through /bin/sh", argv, exc)
            else:
                return process
        shell = ["/bin/sh", "-c", self.spec.command]
        process = await nursery.start(run_and_kill_group, shell, stdio, self.env, self.marker)
        return process

    async def feed(self, stream: trio.abc.SendStream) -> None:
        async with stream:
            try:
                for chunk in self.message.chunks():
                    await stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.log.info("filter command closed input early")
            except OSError as exc:
                self.failure = f"couldn't read spool: {exc}"
                raise _Abort from exc

    async def drain_stdout(self, stream: trio.abc.ReceiveStream) -> None:
        assert self.output is not None
        async with stream:
            while chunk := await stream.receive_some(RECEIVE_SIZE):
                if self.size_limit is not None and self.output.size + len(chunk) > self.size_limit:
                    self.failure = too_big(self.output.size + len(chunk), self.size_limit)
                    raise _Abort
                try:
                    self.output.write(bytes(chunk))
                except OSError as exc:
                    self.failure = f"couldn't spool filter output: {exc}"
                    raise _Abort from exc

    async def drain_stderr(self, stream: trio.abc.ReceiveStream) -> None:
        async with stream:
            while chunk := await stream.receive_some(RECEIVE_SIZE):
                self.stderr.feed(bytes(chunk))

    async def watch_file_size(self) -> None:
        """File mode: kill a filter whose $EMAIL grows past the size limit."""
        assert self.size_limit is not None
        while True:
            await trio.sleep(FILE_SIZE_POLL)
            with contextlib.suppress(OSError):  # replaced by mv this instant: next time
                size = os.stat(self.message.path).st_size
                if size > self.size_limit:
                    self.failure = too_big(size, self.size_limit)
                    raise _Abort

    async def run(self) -> None:
        if self.spec.mode is FilterType.PIPE:
            self.output = Spool.create(self.spec.temp_directory, named=False)
        else:
            self.message.lend()
            self.env["EMAIL"] = self.message.path
        self.recipients_file = move_recipients_to_file(self.env, self.spec.temp_directory)
        if (problem := unexecutable(self.env)) is not None:
            self.failure = problem
            raise _Abort
        async with trio.open_nursery() as nursery:
            process = self.process = await self.start(nursery)
            self.log.debug("filter command %r started, pid %d", self.spec.command, process.pid)
            if process.stdin is not None:
                nursery.start_soon(self.feed, process.stdin)
            if process.stdout is not None:
                nursery.start_soon(self.drain_stdout, process.stdout)
            assert process.stderr is not None
            nursery.start_soon(self.drain_stderr, process.stderr)
            if self.spec.mode is FilterType.FILE and self.size_limit is not None:
                watcher = trio.CancelScope()
                nursery.start_soon(self._watch_until, watcher)
            else:
                watcher = None
            await process.wait()
            if watcher is not None:
                watcher.cancel()
        if self.output is not None:
            self.output.finish()

    async def _watch_until(self, scope: trio.CancelScope) -> None:
        with scope:
            await self.watch_file_size()


class _Abort(Exception):
    """The run stops early: our own I/O failed (spool), the output outgrew the size limit or
    exec would refuse the environment; the reason is in _Run.failure.  Never leaves
    run_filter: it becomes a local-error verdict."""


async def run_filter(
    spec: FilterSpec,
    message: Spool,
    env: Mapping[str, str],
    log: Logger = log,
    *,
    size_limit: int | None = None,
) -> FilterVerdict:
    """Run the filter over ``message``; see the module docstring for the rules.

    ``size_limit``: the largest output accepted, in bytes (the size promised to the client:
    MaxMessageSize or the upstream's SIZE, the smaller); None for no limit.

    Cancellation (the client left) propagates, after the process group (and whatever left
    it) is dead, and the output spool and the RECIPIENTS_FILE are removed.
    """
    run = _Run(spec, message, env, log, size_limit)
    verdict: FilterVerdict | None = None
    try:
        with trio.move_on_after(spec.timeout) as deadline:
            try:
                await run.run()
            except* _Abort:
                verdict = local_error(run.failure or "filter I/O failed")
            except* OSError as group:  # Spool.create, spawning /bin/sh, the final flush
                verdict = local_error(f"couldn't run: {group.exceptions[0]}")
            except* ValueError as group:  # exec refused the environment or the command
                verdict = local_error(f"couldn't run: {group.exceptions[0]}")
        if verdict is None and deadline.cancelled_caught:
            verdict = local_error(f"timed out after {spec.timeout:g}s", timed_out=True)
        if verdict is None:
            assert run.process is not None and run.process.returncode is not None
            code = run.process.returncode
            run.log.debug("filter command pid %d exited with %d", run.process.pid, code)
            verdict = judge(
                code,
                run.stderr,
                run.output,
                message,
                input_size=run.input_size,
                size_limit=run.size_limit,
            )
        return verdict
    finally:
        if run.output is not None and (verdict is None or verdict.message is not run.output):
            run.output.close()
        if run.recipients_file is not None:
            try:
                os.unlink(run.recipients_file)
            except OSError as exc:
                run.log.warning("couldn't remove %s: %s", run.recipients_file, exc)
