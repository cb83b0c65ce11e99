"""Log handlers that never block (docs/behaviour.md §9.4): one non-blocking write a record.

A syslog daemon that stops reading (its socket queue holds
``/proc/sys/net/unix/max_dgram_qlen`` records, ten by default) or a stderr pipe nobody
reads (a stuck supervisord) used to block ``send()``/``write()`` inside the event loop of
every worker and in the supervisor: sessions hung and SIGTERM did nothing.  Here a record
goes out in one non-blocking system call, or it is dropped and counted.  The first record
that goes out again is preceded by one warning, ``dropped N log lines: DESTINATION was
full``, and every drop is counted by the hook of `set_drop_counter` (the metrics'
``proxsmtpd_log_lines_dropped_total``).

Why not a bounded queue to a logging thread: the supervisor forks its workers, and a fork
copies a lock the thread may hold at that instant (the queue's, the handler's), so every
process would need its thread restarted after each fork; a thread stuck in ``send()`` would
also hold up the exit, which flushes the queue.  One system call that cannot block needs no
thread, is the same in every process, and costs less per record.

Destinations (`Outlet`):

- syslog: our own Unix socket (datagram, else stream, as SysLogHandler), non-blocking; a
  send refused for another reason than "full" (the syslog daemon restarted) reconnects
  once and tries again, as SysLogHandler did.
- stderr (``-d``): a pipe is opened again through ``/proc/self/fd/N`` with O_NONBLOCK, so
  the flag is on our own open file description, never on the one we share with whoever
  gave us the pipe (supervisord, a shell); a socket (systemd's journal stream) is sent to
  with MSG_DONTWAIT; a regular file or a terminal is written as before.

A stream that takes only part of a record keeps the rest (one record at most) and sends it
first next time, so a line is never cut; while that rest cannot go, new records are
dropped.  A forked child forgets the parent's rest and count (`_forget_after_fork`): each
process reports its own drops, in its own name.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import os
import socket
import stat
import weakref
from collections.abc import Callable
from typing import TextIO

__all__ = ["NonBlockingHandler", "Outlet", "StderrHandler", "SyslogHandler", "stderr_outlet"]

_FULL = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})
_drop_counter: Callable[[int], None] | None = None
_handlers: weakref.WeakSet[NonBlockingHandler] = weakref.WeakSet()


def set_drop_counter(counter: Callable[[int], None] | None) -> None:
    """Call `counter(n)` for every n records dropped from now on (None: stop)."""
    global _drop_counter
    _drop_counter = counter


class Outlet:
    """Where the bytes of records go: a descriptor written as is (a file, a terminal, or
    our own non-blocking description of a pipe)."""

    def __init__(self, fd: int, name: str, *, own: bool = False) -> None:
        self.fd = fd
        self.name = name
        self._own = own

    def send(self, data: bytes) -> int:
        """Bytes taken; raises OSError (BlockingIOError when full)."""
        return os.write(self.fd, data)

    def reconnect(self) -> bool:
        """After a failure other than "full": make a new connection (True) if that can help."""
        return False

    def close(self) -> None:
        if self._own and self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        self.fd = -1


class _SocketOutlet(Outlet):
    """A socket we share (stderr under systemd): MSG_DONTWAIT leaves its flags alone."""

    def __init__(self, sock: socket.socket, name: str) -> None:
        super().__init__(sock.fileno(), name)
        self.sock = sock

    def send(self, data: bytes) -> int:
        return self.sock.send(data, socket.MSG_DONTWAIT)

    def close(self) -> None:
        self.sock.close()
        self.fd = -1


class _SyslogOutlet(Outlet):
    """Our own non-blocking connection to the syslog socket at `path`."""

    def __init__(self, path: str) -> None:
        super().__init__(-1, f"the syslog socket {path}")
        self.path = path
        self.sock: socket.socket | None = None
        self.reconnect()

    def reconnect(self) -> bool:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = socket.socket(socket.AF_UNIX, kind)
            sock.setblocking(False)  # a stream's connect too: a full backlog is EAGAIN
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                continue
            self.sock = sock
            return True
        return False

    def send(self, data: bytes) -> int:
        if self.sock is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
        return self.sock.send(data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def stderr_outlet(stream: TextIO) -> Outlet | None:
    """The outlet for `stream` (sys.stderr), or None when it has no descriptor (a test's
    captured stderr: then a plain StreamHandler writes it, as before)."""
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):
        return None
    stream.flush()
    if stat.S_ISFIFO(mode):
        try:
            own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # no /proc, or no reader left (then writes fail at once anyway)
            return Outlet(fd, "stderr")
        if os.fstat(own).st_ino == os.fstat(fd).st_ino:
            return Outlet(own, "stderr", own=True)
        os.close(own)
        return Outlet(fd, "stderr")
    if stat.S_ISSOCK(mode):
        copy = os.dup(fd)
        try:
            return _SocketOutlet(socket.socket(fileno=copy), "stderr")
        except OSError:
            os.close(copy)
    return Outlet(fd, "stderr")


class NonBlockingHandler(logging.Handler):
    """Writes each record with one call that cannot block, or drops and counts it."""

    def __init__(self, outlet: Outlet) -> None:
        super().__init__()
        self.outlet = outlet
        self.dropped = 0  # since the last record that went out
        self._reason = "was full"
        self._rest = b""  # what a stream did not take of the last record
        _handlers.add(self)

    def encode(self, record: logging.LogRecord) -> bytes:
        raise NotImplementedError

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.encode(record)
        except Exception:
            self.handleError(record)
            return
        if self.dropped:
            notice = logging.LogRecord(
                record.name, logging.WARNING, __file__, 0, "dropped %d log lines: %s %s",
                (self.dropped, self.outlet.name, self._reason), None,
            )  # fmt: skip
            if not self._write(self.encode(notice)):
                self._drop()
                return
            self.dropped = 0
        if not self._write(data):
            self._drop()

    def _drop(self) -> None:
        self.dropped += 1
        counter = _drop_counter
        if counter is not None:
            with contextlib.suppress(Exception):  # logging must never fail the caller
                counter(1)

    def _write(self, data: bytes) -> bool:
        """True if `data` was taken (a stream may keep part of it for next time)."""
        if self._rest and not self._send_rest():
            return False
        try:
            taken = self.outlet.send(data)
        except OSError as exc:
            if exc.errno in _FULL:
                self._reason = "was full"
                return False
            self._reason = f"failed ({exc.strerror or exc})"
            if not self.outlet.reconnect():
                return False
            self._rest = b""  # a new connection: a record's tail would be garbage there
            try:
                taken = self.outlet.send(data)
            except OSError:
                return False
        self._rest = data[taken:]
        return True

    def _send_rest(self) -> bool:
        try:
            taken = self.outlet.send(self._rest)
        except OSError:
            return False
        self._rest = self._rest[taken:]
        return not self._rest

    def close(self) -> None:
        self.acquire()
        try:
            if self._rest:
                self._send_rest()
            self.outlet.close()
        finally:
            self.release()
        super().close()

    def forget(self) -> None:
        """In a forked child: the rest and the count are the parent's to send and report."""
        self._rest = b""
        self.dropped = 0


class StderrHandler(NonBlockingHandler):
    """``-d``: the formatted line and a newline, in the stream's encoding."""

    def __init__(self, outlet: Outlet, encoding: str | None) -> None:
        super().__init__(outlet)
        self.encoding = encoding or "utf-8"

    def encode(self, record: logging.LogRecord) -> bytes:
        return f"{self.format(record)}\n".encode(self.encoding, "backslashreplace")


class SyslogHandler(NonBlockingHandler):
    """Syslog facility mail over a Unix socket: ``<PRI>text\\0``, as SysLogHandler sends."""

    def __init__(self, path: str, facility: int = logging.handlers.SysLogHandler.LOG_MAIL) -> None:
        super().__init__(_SyslogOutlet(path))
        self.facility = facility

    def encode(self, record: logging.LogRecord) -> bytes:
        names = logging.handlers.SysLogHandler
        severity = names.priority_names[names.priority_map.get(record.levelname, "warning")]
        return f"<{self.facility << 3 | severity}>{self.format(record)}\0".encode()


def _forget_after_fork() -> None:
    for handler in list(_handlers):
        handler.forget()


os.register_at_fork(after_in_child=_forget_after_fork)
