"""`Workers: N`: N pre-forked worker processes on the listening sockets, and their supervisor.

One Python process tops out at about one core (bench/README.md), so with N > 1 the command
line forks N workers after bind, detach, pid file and User switch; each runs the ordinary
Trio server on the same already-bound sockets and the kernel spreads the accepts.  The
original process stays as the supervisor.  It runs no Trio: the command line has blocked
SIGTERM/SIGINT/SIGHUP since before bind, so it simply waits for them (and SIGCHLD) with
`sigtimedwait`, which leaves no window where a signal could be lost or run a handler.

- SIGTERM/SIGINT go to every worker (each drains as a single process would); the
  supervisor returns once all workers have exited.  A second one ends the grace period: the
  supervisor sends every worker END_GRACE_SIGNAL instead, never the same signal twice, as
  two SIGTERMs sent a millisecond apart reach a worker as one whenever the second comes
  before the worker took the first (signals of one kind do not queue).  A worker takes
  END_GRACE_SIGNAL as a stop followed by a second one, so whichever of the two it sees
  first, its grace period ends (docs/behaviour.md, section 11).
- SIGHUP goes to every worker (each reloads the file itself) and to `on_hup`, so that a
  replacement worker starts from the reloaded config.
- A worker that exits while we are not stopping is logged as an error and started again,
  at most once per `restart_interval` per slot, so a crash loop cannot spin.
- A worker gets SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so a SIGKILLed
  supervisor leaves no worker behind.
- The supervisor is a child subreaper: when a worker dies, its filters and what it had
  adopted are re-parented to us, and are killed and reaped before the worker is
  (reaper.kill_adopted; docs/behaviour.md §11.7).
- `on_worker_exit(pid)` is called for every worker that exited, after its filters are
  killed and before its zombie is reaped, so that no other process has its pid meanwhile
  (service.py removes its spool files, metrics.MultiprocessDirectory drops its share of
  the live gauges, client_table.ClientTable forgets its clients' connections).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.daemon import notify
from trio_proxsmtp.stages import reaper

__all__ = [
    "END_GRACE_SIGNAL",
    "STOP_SIGNALS",
    "Supervisor",
    "describe_exit",
    "set_parent_death_signal",
]

log = logging.getLogger(LOGGER_NAME)

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# The supervisor's "a second stop signal came": to its workers only (see above).
END_GRACE_SIGNAL = signal.SIGUSR2
_WAITED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})
# Workers inherit it blocked, until their signal receiver takes it (signals.serve).
_BLOCKED = _WAITED | {END_GRACE_SIGNAL}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_MAX_WAIT = 5.0  # seconds; the loop also polls for exited workers at least this often


def set_parent_death_signal(signum: int) -> bool:
    """Ask Linux to send us `signum` when our parent dies; False where that is unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def describe_exit(status: int) -> str:
    """A wait status as words: "exited with status 1", "was killed by signal SIGKILL"."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return f"was killed by signal {name}"


class Supervisor:
    """Fork `count` workers that each run `work(index)` (its return value is the worker's exit
    status), keep them running and pass signals on.  `run()` returns the supervisor's status.
    """

    def __init__(
        self,
        count: int,
        work: Callable[[int], int],
        *,
        sockets: Iterable[socket.socket] = (),
        on_hup: Callable[[], None] | None = None,
        on_worker_exit: Callable[[int], None] | None = None,
        restart_interval: float = 1.0,
    ) -> None:
        if count < 1:
            raise ValueError(f"need at least one worker, not {count}")
        self.count = count
        self._work = work
        # Closed when we stop: once the workers have closed theirs, nothing holds the
        # listener open, so new clients are refused instead of waiting in its backlog.
        self._sockets = list(sockets)
        self._on_hup = on_hup
        self._on_worker_exit = on_worker_exit
        self._restart_interval = restart_interval
        self.pids: dict[int, int] = {}  # pid -> slot
        self._started: dict[int, float] = {}  # slot -> monotonic time of its last start
        self._due: dict[int, float] = {}  # slot -> when to start it again
        self.stopping = False

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        log.info("starting %d workers (supervisor pid %d)", self.count, os.getpid())
        reaper.enable_subreaper()  # a dead worker's filters come to us (_reap)
        for slot in range(self.count):
            self._start(slot)
        while self.pids or (self._due and not self.stopping):
            info = signal.sigtimedwait(_WAITED, self._timeout())
            if info is not None:
                self._on_signal(info.si_signo)
            self._reap()
            self._restart_due()
        log.info("all workers stopped")
        return 0

    def _timeout(self) -> float:
        if not self._due:
            return _MAX_WAIT
        return min(_MAX_WAIT, max(0.0, min(self._due.values()) - time.monotonic()))

    def _on_signal(self, signum: int) -> None:
        if signum in STOP_SIGNALS:
            name = signal.Signals(signum).name
            if not self.stopping:
                log.info("received %s: stopping %d workers", name, len(self.pids))
                self.stopping = True
                notify.stopping()
                self._due.clear()
                for sock in self._sockets:
                    sock.close()
                self._forward(signum)
            else:
                self._forward(END_GRACE_SIGNAL)
                log.info("received %s again: ending the workers' grace period", name)
        elif signum == signal.SIGHUP:
            if self._on_hup is not None and not self.stopping:
                self._on_hup()
            self._forward(signum)

    def _forward(self, signum: int) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):  # exited: _reap will see it
                os.kill(pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                # WNOWAIT: clean up while the zombie still holds the pid (it names the
                # worker's files), then reap it.
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            # A dead worker's filters, or an adopted orphan's children, are ours now.
            reaper.kill_adopted(self.pids)
            if pid in self.pids and self._on_worker_exit is not None:
                self._on_worker_exit(pid)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:  # an orphan, reaped by kill_adopted
                continue
            slot = self.pids.pop(pid, None)
            if slot is None:
                continue
            what = describe_exit(status)
            if self.stopping:
                log.debug("worker %d of %d (pid %d) %s", slot + 1, self.count, pid, what)
                continue
            log.error(
                "worker %d of %d (pid %d) %s: starting a new one", slot + 1, self.count, pid, what
            )
            self._due[slot] = max(time.monotonic(), self._started[slot] + self._restart_interval)

    def _restart_due(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for slot, due in sorted(self._due.items()):
            if due <= now:
                del self._due[slot]
                self._start(slot)

    def _start(self, slot: int) -> None:
        supervisor = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        # Everything the supervisor holds goes to the collector's permanent generation: a
        # worker's collections then never write to those objects' headers, which would
        # copy their pages into each worker (bench/README.md, "Memory").
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as exc:
            log.error("couldn't start worker %d of %d: %s", slot + 1, self.count, exc)
            self._started[slot] = time.monotonic()
            self._due[slot] = self._started[slot] + self._restart_interval
            return
        if pid == 0:
            os._exit(self._child(slot, supervisor))
        self.pids[pid] = slot
        self._started[slot] = time.monotonic()

    def _child(self, slot: int, supervisor: int) -> int:
        """Runs in the new worker; never returns into the supervisor's code."""
        status = 1
        try:
            # SIGTERM stays blocked until the server's receiver takes it, so a supervisor
            # death during start-up is handled as an ordinary drain.
            set_parent_death_signal(signal.SIGTERM)
            if os.getppid() != supervisor:
                return 0  # the supervisor died before prctl took effect
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            log.info("worker %d of %d started (pid %d)", slot + 1, self.count, os.getpid())
            status = self._work(slot)
        except BaseException:
            log.exception("worker %d of %d failed", slot + 1, self.count)
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        return status
