"""Start-up, after the command line is read: bind, detach, pid file, User, then serve.

The order (fixing B16/B17, so that every failure reaches the invoking shell): bind ->
detach (without -d; the original process waits on a pipe and exits 0 only when the daemon
reports "ready") -> write the pid file (in the serving process) -> switch User (privileges.py)
-> serve (service.py).  Until the server has its signal receiver, SIGTERM/SIGINT/SIGHUP
wait (signals.py).  A start-up failure is one line for the operator and exit status 1.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

from trio_proxsmtp.common.log import LOGGER_NAME, logs_to_stderr
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.daemon import listeners, notify, service, signals
from trio_proxsmtp.daemon.privileges import PrivilegeError, UserInfo, switch_user
from trio_proxsmtp.daemon.prometheus import bind_metrics_listener
from trio_proxsmtp.relay.settings import TransparentMode

__all__ = ["PROG", "Daemon", "print_error", "remove_pid_file", "start", "write_pid_file"]

PROG = "proxsmtpd"

log = logging.getLogger(LOGGER_NAME)


class _StartupError(Exception):
    """A failure after the config was read: one line for the operator, exit status 1."""


def print_error(text: str) -> None:
    """One line for the invoking shell, on stderr."""
    print(f"{PROG}: {text}", file=sys.stderr)


def write_pid_file(path: str) -> None:
    """Write our pid, decimal and newline, replacing any old file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


def remove_pid_file(path: str) -> None:
    """Remove the pid file, if it still holds our pid (another instance may own it now)."""
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("couldn't remove pid file: %s: %s", path, exc.strerror)


class Daemon:
    """Double fork + setsid; the original process learns the outcome through a pipe."""

    def __init__(self) -> None:
        self._write_fd = -1
        self.detached = False

    def detach(self) -> int | None:
        """Return an exit status in the original process, None in the daemon."""
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child:
            os.close(write_fd)
            return self._wait_for_report(read_fd, child)
        os.close(read_fd)
        os.setsid()
        if os.fork():
            os._exit(0)
        os.chdir("/")
        self._write_fd = write_fd
        self.detached = True
        return None

    @staticmethod
    def _wait_for_report(read_fd: int, child: int) -> int:
        chunks = []
        with os.fdopen(read_fd, "rb") as pipe:
            while chunk := pipe.read(4096):
                chunks.append(chunk)
        os.waitpid(child, 0)
        report = b"".join(chunks).decode("utf-8", "replace")
        if report == "ready":
            return 0
        print_error(report or "the daemon exited during start-up")
        return 1

    def report(self, text: str) -> None:
        """Tell the original process how start-up went; "ready" makes it exit 0."""
        if self._write_fd < 0:
            return
        if text == "ready":
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.close(devnull)
        os.write(self._write_fd, text.encode("utf-8", "replace"))
        os.close(self._write_fd)
        self._write_fd = -1


def start(
    config: Config,
    user: UserInfo | None,
    pid_file: str | None,
    daemonize: bool,
    config_path: str,
) -> int:
    """Bind, detach, write the pid file, drop privileges, serve; one error line on failure."""
    daemon = Daemon()
    # Only this process speaks to systemd: filters and workers must not inherit the socket.
    notify.take_socket()
    # Until serve() has its signal receiver, SIGTERM/SIGINT/SIGHUP wait (signals.py).
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals.HANDLED_SIGNALS)
    try:
        return _start_blocked(config, user, pid_file, daemonize, config_path, daemon)
    finally:
        # Whatever happened (a start-up error above all), the caller's mask comes back:
        # a process started later must not inherit SIGTERM blocked (it would never stop).
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _start_blocked(
    config: Config,
    user: UserInfo | None,
    pid_file: str | None,
    daemonize: bool,
    config_path: str,
    daemon: Daemon,
) -> int:
    try:
        try:
            sockets: list[socket.socket] = listeners.bind_listeners(config)
        except OSError as exc:
            where = exc.filename or config.listen  # Listen or ListenTLS
            raise _StartupError(f"couldn't bind to address: {where}: {_strerror(exc)}") from None
        # MetricsListen is bound like Listen: before detaching and switching User.
        if config.metrics_listen is not None:
            try:
                metrics_sockets = bind_metrics_listener(config.metrics_listen)
            except OSError as exc:
                for sock in sockets:
                    sock.close()
                raise _StartupError(
                    f"couldn't bind MetricsListen: {config.metrics_listen}: {_strerror(exc)}"
                ) from None
        else:
            metrics_sockets = []
        if daemonize:
            status = daemon.detach()
            if status is not None:
                for sock in sockets + metrics_sockets:
                    sock.close()
                return status
        pid_written = False
        try:
            if pid_file is not None:
                try:
                    write_pid_file(pid_file)
                except OSError as exc:
                    raise _StartupError(
                        f"couldn't write pid file: {pid_file}: {_strerror(exc)}"
                    ) from None
                pid_written = True
                log.debug("wrote pid file: %s", pid_file)
            if user is not None:
                keep = config.transparent_proxy is TransparentMode.FULL
                try:
                    for warning in switch_user(user, keep_net_admin=keep):
                        log.warning("%s", warning)
                except PrivilegeError as exc:
                    raise _StartupError(str(exc)) from None
            if os.geteuid() == 0:
                log.warning("running as root is NOT recommended")
            daemon.report("ready")
            if config.workers > 1:
                return service.supervise(config, sockets, config_path, metrics_sockets)
            return service.serve(config, sockets, config_path, metrics_sockets=metrics_sockets)
        finally:
            if pid_written and pid_file is not None:
                remove_pid_file(pid_file)
    except _StartupError as exc:
        text = str(exc)
        log.error("%s", text)
        if daemon.detached:
            daemon.report(text)
            os._exit(1)
        if not logs_to_stderr():
            print_error(text)
        return 1


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)
