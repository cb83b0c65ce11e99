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
* Descendants that leave the process group are killed too (reaper.py).
* The filter is started in the Trio thread (`subprocess.Popen`'s vfork path: no
  preexec_fn, no uid/gid change), not in a worker thread as `trio.run_process` does: the
  thread hand-off cost more CPU than the spawn itself (bench/spawn.py).

Knows nothing about sockets: it gets a spool and an environment and returns a ``Verdict``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence

import attrs
import trio

from trio_proxsmtp.protocol.smtp.replies import LOCAL_ERROR, Reply, reply_from_text
from trio_proxsmtp.stages import reaper
from trio_proxsmtp.stages.settings import FilterSpec, FilterType, direct_argv
from trio_proxsmtp.stages.spool import Spool

log = logging.getLogger("trio_proxsmtp.filter")
# run_filter logs through the connection's logger when given one (its lines carry its id).
Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]

KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL to the group
STDERR_LINE_LIMIT = 4096  # bytes of one stderr line kept
RECEIVE_SIZE = 256 * 1024
# One environment string may hold 128 KiB (MAX_ARG_STRLEN); past this RECIPIENTS is a file.
RECIPIENTS_ENV_LIMIT = 64 * 1024
FILE_SIZE_POLL = 0.25  # seconds between size checks of a file-mode filter's $EMAIL

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class VerdictKind(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    DROP = "drop"
    ERROR = "error"


@attrs.frozen
class Verdict:
    """What the relay does with the message."""

    kind: VerdictKind
    reply: Reply | None  # REJECT/DROP: the filter's reply; ERROR: 451 Local Error
    message: Spool | None  # ACCEPT: what to deliver (pipe: a new spool the caller closes)
    status: str  # the summary log's status= value
    detail: str  # for logs: "exit 1", "killed by signal 9", "timed out after 30s", ...
    timed_out: bool = False  # ERROR because FilterTimeout ran out (for the metrics)


_METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # metrics.MULTIPROC_ENV, without prometheus-client


def filter_environment(
    *,
    client: str,
    server: str,
    sender: str | None,
    recipients: Sequence[str],
    remote: str | None,
    remote_helo: str | None,
    temp_directory: str,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The daemon's environment plus the variables of docs/behaviour.md §6.1 (EMAIL is
    added by run_filter).

    Without the metrics directory of `Workers` (metrics.py): a filter written with
    prometheus-client would otherwise add its own numbers to the proxy's.
    """
    env = dict(os.environ if base is None else base)
    env.pop(_METRICS_DIR_ENV, None)
    env["CLIENT"] = client
    env["SERVER"] = server
    env["TMPDIR"] = temp_directory
    if sender is not None:
        env["SENDER"] = sender
    if recipients:
        env["RECIPIENTS"] = "\n".join(recipients)
    if remote is not None:
        env["REMOTE"] = remote
    if remote_helo is not None:
        env["REMOTE_HELO"] = remote_helo
    return env


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


def _move_recipients_to_file(env: dict[str, str], directory: str) -> str | None:
    """RECIPIENTS too big for exec: write it to a 0600 file named by RECIPIENTS_FILE.

    One recipient per line, each ending in a newline. Returns the path (the caller removes
    it) or None when RECIPIENTS fits. Raises OSError.
    """
    recipients = env.get("RECIPIENTS")
    if recipients is None:
        return None
    data = recipients.encode("utf-8", "surrogateescape")
    if len(data) <= RECIPIENTS_ENV_LIMIT:
        return None
    fd, path = tempfile.mkstemp(prefix="proxsmtpd-rcpt.", dir=directory)
    try:
        with open(fd, "wb", closefd=True) as f:
            f.write(data + b"\n")
    except BaseException:
        os.unlink(path)
        raise
    del env["RECIPIENTS"]
    env["RECIPIENTS_FILE"] = path
    return path


def _unexecutable(env: Mapping[str, str]) -> str | None:
    """Why exec would refuse this environment (a NUL byte), or None."""
    for name, value in env.items():
        if "\0" in name or "\0" in value:
            return f"environment variable {name.replace(chr(0), '?')} contains a NUL byte"
    return None


def _local_error(detail: str, *, timed_out: bool = False) -> Verdict:
    return Verdict(
        kind=VerdictKind.ERROR,
        reply=LOCAL_ERROR,
        message=None,
        status="FILTER-ERROR",
        detail=detail,
        timed_out=timed_out,
    )


class _StderrTail:
    """Keeps only the last non-blank stderr line, bounded, across any chunking (B21)."""

    def __init__(self) -> None:
        self.last = b""
        self._line = bytearray()

    def feed(self, data: bytes) -> None:
        lines = data.split(b"\n")
        for complete in lines[:-1]:
            self._add(complete)
            self._end_line()
        self._add(lines[-1])

    def _add(self, part: bytes) -> None:
        room = STDERR_LINE_LIMIT - len(self._line)
        if room > 0:
            self._line += part[:room]
        elif not self._line.strip():  # all whitespace so far: nothing worth keeping
            self._line[:] = part[:STDERR_LINE_LIMIT]

    def _end_line(self) -> None:
        if self._line.strip():
            self.last = bytes(self._line)
        self._line.clear()

    def text(self) -> str:
        self._end_line()
        text = self.last.decode("utf-8", errors="surrogateescape")
        return _CONTROL.sub(" ", text).strip()


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
        self.stderr = _StderrTail()
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
                    _run_and_kill_group, argv, stdio, self.env, self.marker
                )
            except OSError as exc:
                self.log.debug("exec %r failed (%s); retrying through /bin/sh", argv, exc)
            else:
                return process
        shell = ["/bin/sh", "-c", self.spec.command]
        process = await nursery.start(_run_and_kill_group, shell, stdio, self.env, self.marker)
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
                    self.failure = self.too_big(self.output.size + len(chunk))
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
                    self.failure = self.too_big(size)
                    raise _Abort

    def too_big(self, size: int) -> str:
        return f"filter output of {size}+ bytes exceeds the size limit of {self.size_limit}"

    async def run(self) -> None:
        if self.spec.mode is FilterType.PIPE:
            self.output = Spool.create(self.spec.temp_directory, named=False)
        else:
            self.message.lend()
            self.env["EMAIL"] = self.message.path
        self.recipients_file = _move_recipients_to_file(self.env, self.spec.temp_directory)
        if (problem := _unexecutable(self.env)) is not None:
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
    """Our own I/O failed (spool); the reason is in _Run.failure."""


async def _run_and_kill_group(
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


async def run_filter(
    spec: FilterSpec,
    message: Spool,
    env: Mapping[str, str],
    log: Logger = log,
    *,
    size_limit: int | None = None,
) -> Verdict:
    """Run the filter over ``message``; see the module docstring for the rules.

    ``size_limit``: the largest output accepted, in bytes (the size promised to the client:
    MaxMessageSize or the upstream's SIZE, the smaller); None for no limit.

    Cancellation (the client left) propagates, after the process group (and whatever left
    it) is dead, and the output spool and the RECIPIENTS_FILE are removed.
    """
    run = _Run(spec, message, env, log, size_limit)
    verdict: Verdict | None = None
    try:
        with trio.move_on_after(spec.timeout) as deadline:
            try:
                await run.run()
            except* _Abort:
                verdict = _local_error(run.failure or "filter I/O failed")
            except* OSError as group:  # Spool.create, spawning /bin/sh, the final flush
                verdict = _local_error(f"couldn't run: {group.exceptions[0]}")
            except* ValueError as group:  # exec refused the environment or the command
                verdict = _local_error(f"couldn't run: {group.exceptions[0]}")
        if verdict is None and deadline.cancelled_caught:
            verdict = _local_error(f"timed out after {spec.timeout:g}s", timed_out=True)
        if verdict is None:
            verdict = _judge(run, message)
        return verdict
    finally:
        if run.output is not None and (verdict is None or verdict.message is not run.output):
            run.output.close()
        if run.recipients_file is not None:
            try:
                os.unlink(run.recipients_file)
            except OSError as exc:
                run.log.warning("couldn't remove %s: %s", run.recipients_file, exc)


# sh's exit codes for "found but not executable" and "not found".
_SHELL_CANNOT_RUN = {126: "not executable", 127: "not found"}


def _judge(run: _Run, message: Spool) -> Verdict:
    """The verdict for a filter that ran to its end."""
    assert run.process is not None and run.process.returncode is not None
    code = run.process.returncode
    run.log.debug("filter command pid %d exited with %d", run.process.pid, code)
    if code < 0:
        return _local_error(f"killed by signal {-code}")
    if code in _SHELL_CANNOT_RUN:
        stderr = run.stderr.text()
        return _local_error(
            f"exit {code}: command {_SHELL_CANNOT_RUN[code]}" + (f": {stderr}" if stderr else "")
        )
    if code == 0:
        output = run.output
        if output is None:  # file mode: the spool itself, perhaps edited or replaced
            try:
                message.refresh_size()
            except OSError as exc:
                return _local_error(f"couldn't reopen {message.path}: {exc}")
            output = message
            if run.size_limit is not None and message.size > run.size_limit:
                return _local_error(run.too_big(message.size))
        if output.size == 0 and run.input_size > 0:
            return _local_error(f"exit 0 but no output for a message of {run.input_size} bytes")
        return Verdict(VerdictKind.ACCEPT, None, output, "FILTERED", "exit 0")
    reply = reply_from_text(run.stderr.text())
    kind = VerdictKind.DROP if 200 <= reply.code < 300 else VerdictKind.REJECT
    return Verdict(kind, reply, None, _status_text(reply), f"exit {code}")


_PREFIX = "Content Rejected; "


def _status_text(reply: Reply) -> str:
    """The summary status for a reply: what the filter said (docs/behaviour.md §6.4)."""
    text = " / ".join(reply.lines)
    if reply.code == 550 and text.startswith(_PREFIX):
        return text[len(_PREFIX) :]
    return f"{reply.code} {text}"
