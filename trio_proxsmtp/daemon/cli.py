"""The proxsmtpd command line: `-d LEVEL -f FILE -p PIDFILE -v`, plus `-h` and `-t`.

Start-up order (fixing B16/B17, so that every failure reaches the invoking shell):
load the config -> set up logging -> look the User up -> bind -> detach (without -d; the
original process waits on a pipe and exits 0 only when the daemon reports "ready") -> write
the pid file (in the serving process) -> switch User -> serve. Exit status: 0 normal, 1 a
start-up failure (bind, pid file, user), 2 a usage or config error.

With `Workers: N` > 1 "serve" means: fork N workers that serve the bound sockets, and stay
as their supervisor (workers.py); the pid file holds the supervisor's pid and is removed by
it. With N = 1 the process serves itself, as proxsmtpd does.
"""

from __future__ import annotations

import functools
import getopt
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

import trio

from trio_proxsmtp import __version__
from trio_proxsmtp.common.log import LOGGER_NAME, LoggingUnavailable, logs_to_stderr, setup_logging
from trio_proxsmtp.config.loader import load_config, load_config_with_warnings
from trio_proxsmtp.config.model import Config, ConfigError
from trio_proxsmtp.daemon import notify, server, signals
from trio_proxsmtp.daemon.privileges import PrivilegeError, UserInfo, lookup_user, switch_user
from trio_proxsmtp.daemon.prometheus import (
    MultiprocessDirectory,
    PrometheusMetrics,
    bind_metrics_listener,
)
from trio_proxsmtp.daemon.workers import Supervisor
from trio_proxsmtp.relay.settings import TransparentMode
from trio_proxsmtp.stages import reaper

PROG = "proxsmtpd"
DEFAULT_CONFIG = "/etc/proxsmtpd.conf"
USAGE = f"""\
usage: {PROG} [-d level] [-f configfile] [-p pidfile] [-t]
       {PROG} -v | -h
  -d LEVEL   stay in the foreground and log to stderr; LEVEL 0 (errors) .. 4 (protocol trace)
  -f FILE    configuration file (default {DEFAULT_CONFIG})
  -p FILE    write the daemon's pid to FILE (PidFile in the config overrides it)
  -t         check the configuration and exit (0: OK, 2: error)
  -v         print the version and the configuration path
  -h, --help print this help
"""

log = logging.getLogger(LOGGER_NAME)


class _StartupError(Exception):
    """A failure after the config was read: one line for the operator, exit status 1."""


def _error(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr)


def _parse_debug_level(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 4:
        raise ValueError("invalid debug log level (must be between 0 and 4)")
    return int(text)


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


class _Daemon:
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
        _error(report or "the daemon exited during start-up")
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


def main(argv: list[str] | None = None) -> int:
    """Run proxsmtpd; returns the process exit status."""
    args = sys.argv[1:] if argv is None else argv
    try:
        opts, rest = getopt.getopt(args, "d:f:p:vht", ["help"])
    except getopt.GetoptError as exc:
        _error(str(exc))
        sys.stderr.write(USAGE)
        return 2
    if rest:
        _error(f"unexpected argument: {rest[0]}")
        sys.stderr.write(USAGE)
        return 2

    debug_level: int | None = None
    config_path = DEFAULT_CONFIG
    cli_pid_file: str | None = None
    show_version = show_help = check_only = False
    for flag, value in opts:
        if flag == "-d":
            try:
                debug_level = _parse_debug_level(value)
            except ValueError as exc:
                _error(str(exc))
                return 2
        elif flag == "-f":
            config_path = value
        elif flag == "-p":
            cli_pid_file = value
        elif flag == "-v":
            show_version = True
        elif flag == "-t":
            check_only = True
        else:
            show_help = True

    if show_help:
        sys.stdout.write(USAGE)
        return 0
    if show_version:
        print(f"trio_proxsmtp (version {__version__}) - proxsmtpd 1.10 compatible")
        print(f"          (config: {config_path})")
        return 0
    daemonize = debug_level is None and not check_only
    if daemonize:
        # The daemon changes directory to /: a relative -f would make SIGHUP read another
        # file (or none), a relative -p would write /NAME.
        config_path = os.path.abspath(config_path)
        if cli_pid_file is not None:
            cli_pid_file = os.path.abspath(cli_pid_file)

    try:
        config, warnings = load_config_with_warnings(config_path)
        user = lookup_user(config.user) if config.user is not None else None
    except ConfigError as exc:
        _error(str(exc))
        return 2
    except PrivilegeError as exc:
        _error(str(ConfigError(config_path, None, "User", str(exc))))
        return 2 if check_only else 1
    if check_only:
        for warning in warnings:
            _error(f"warning: {warning}")
        print(f"config OK: {config_path}")
        return 0

    pid_file = cli_pid_file
    if config.pid_file is not None:
        if cli_pid_file is not None:
            warnings.append("ignoring pid file specified on the command line")
        pid_file = config.pid_file or None
    if daemonize and pid_file is not None:
        pid_file = os.path.abspath(pid_file)

    try:
        setup_logging(debug_level)
    except LoggingUnavailable as exc:
        _error(str(exc))
        return 1
    log.debug("read config file: %s", config_path)
    for warning in warnings:
        log.warning("%s", warning)
    return _start(config, user, pid_file, daemonize, config_path)


def _start(
    config: Config,
    user: UserInfo | None,
    pid_file: str | None,
    daemonize: bool,
    config_path: str,
) -> int:
    """Bind, detach, write the pid file, drop privileges, serve; one error line on failure."""
    daemon = _Daemon()
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
    daemon: _Daemon,
) -> int:
    try:
        try:
            sockets: list[socket.socket] = server.bind_listeners(config)
        except OSError as exc:
            raise _StartupError(
                f"couldn't bind to address: {config.listen}: {_strerror(exc)}"
            ) from None
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
                return _supervise(config, sockets, config_path, metrics_sockets)
            return _serve(config, sockets, config_path, metrics_sockets=metrics_sockets)
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
            _error(text)
        return 1


def _serve(
    config: Config,
    sockets: list[socket.socket],
    config_path: str,
    worker: tuple[int, int] | None = None,
    *,
    metrics_sockets: list[socket.socket] | None = None,
    metrics_dir: str | None = None,
) -> int:
    """Serve until stopped; `worker` is (index, count) in a worker process.

    With `metrics_sockets` (MetricsListen) metrics are counted, and served by worker 0;
    `metrics_dir` is the supervisor's multi-process directory (Workers: N)."""
    # Every process that runs filters adopts their orphans (reaper.py): after detaching,
    # and in each worker; never inside serve(), so in-process tests stay ordinary.
    # (Undone on return: main() may run in-process, as in tests.)
    subreaper = reaper.enable_subreaper()  # logs a warning where the kernel cannot
    reload: Callable[[], Config] = functools.partial(_reload, config_path)
    serve = functools.partial(signals.serve, reload=reload)
    if metrics_sockets:
        serve = functools.partial(serve, metrics=PrometheusMetrics(metrics_dir))
        if worker is None or worker[0] == 0:
            serve = functools.partial(serve, metrics_sockets=metrics_sockets)
        else:
            for sock in metrics_sockets:
                sock.close()  # worker 0 serves them; the supervisor keeps its own copies
    if worker is not None:
        serve = functools.partial(serve, worker=worker[0], workers=worker[1])
    try:
        trio.run(serve, config, sockets)
    except KeyboardInterrupt:
        pass
    except Exception:
        log.exception("fatal error")
        return 1
    finally:
        if subreaper:
            reaper.disable_subreaper()
    return 0


def _supervise(
    config: Config,
    sockets: list[socket.socket],
    config_path: str,
    metrics_sockets: list[socket.socket],
) -> int:
    """Run config.workers workers on `sockets` until SIGTERM/SIGINT; we supervise them.

    With MetricsListen the workers count into a multi-process metrics directory made here
    before the first fork and removed at exit (metrics.py); worker 0 serves /metrics."""
    count = config.workers
    current = config
    unix_paths = server.unix_socket_files(sockets)
    directory = MultiprocessDirectory() if metrics_sockets else None

    def work(index: int) -> int:
        notify.forget()  # the supervisor speaks for the service
        return _serve(
            current,
            sockets,
            config_path,
            (index, count),
            metrics_sockets=metrics_sockets,
            metrics_dir=directory.path if directory is not None else None,
        )

    def on_hup() -> None:
        # Only for workers started from now on; each running worker reloads (and logs) itself.
        nonlocal current
        notify.reloading()
        try:
            new = load_config(config_path)
        except Exception:
            notify.ready(notify.NOT_RELOADED)
            return
        applied = server.applicable_reload(current, new, count)[0]
        current = applied or current
        notify.ready(
            f"{count} workers; reloaded {config_path}"
            if applied is not None
            else notify.NOT_RELOADED
        )

    try:
        notify.ready(f"{count} workers listening on {config.listen}")
        return Supervisor(
            count,
            work,
            sockets=sockets,
            on_hup=on_hup,
            on_worker_exit=directory.worker_died if directory is not None else None,
        ).run()
    finally:
        server.remove_unix_socket_files(unix_paths)
        if directory is not None:
            directory.close()


def _reload(path: str) -> Config:
    config, warnings = load_config_with_warnings(path)
    for warning in warnings:
        log.warning("%s", warning)
    return config


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)
