"""A message on disk: the body is spooled to a 0600 temp file and streamed, never held whole.

A message nobody needs by name (pipe mode, no filter) stays in memory while it fits in one
buffer (256 KiB, what a file spool buffers before its first write anyway): most mail is
smaller, and making and closing a temp file was a fifth of the proxy's CPU per message.

Disk I/O here is synchronous on purpose. Writes land in the page cache and take microseconds;
handing every chunk to a worker thread (``trio.to_thread``) would cost more than the write
itself. The buffers are large (256 KiB) so a message costs few system calls.

The file is read back by *name*, not through the write handle, because a file-mode filter may
have edited it in place or replaced it with ``mv`` (docs/behaviour.md §6.2).

Every named file a process makes in TempDirectory carries the process's pid
(``proxsmtpd.PID_XXXXXXXX``, `named_prefix`), so that the supervisor of Workers can remove
the files of a worker that died (`sweep_files`, docs/behaviour.md §11.7): a client's
message that was never delivered must not stay on the disk for good.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO

log = logging.getLogger("trio_proxsmtp.spool")

BUFFER_SIZE = 256 * 1024
_MAX_IOV = 512  # pieces per writev (the system's IOV_MAX is 1024)
_O_TMPFILE: int = getattr(os, "O_TMPFILE", 0)


class Spool:
    """One temp file ``<directory>/proxsmtpd.PID_XXXXXXXX`` (mode 0600, close-on-exec).

    It is written and read back through the one descriptor ``mkstemp`` opened (``pread``,
    no second open), until ``lend()`` hands it to a file-mode filter: from then on it is
    read back by name, since the filter may have edited or replaced it.

    A spool nobody needs by name (``named=False``: pipe mode and no filter) lives in memory
    up to BUFFER_SIZE; past that it becomes an unnamed ``O_TMPFILE`` file in the same
    directory where Linux supports it: no name to make or unlink, and nothing left behind
    even if the proxy is killed with SIGKILL.  So for it, `write` is where a file error
    (missing directory, full disk) shows up.
    """

    path: str
    size: int

    def __init__(
        self, path: str, fd: int, *, named: bool = True, directory: str | None = None
    ) -> None:
        self.path = path
        self.named = named
        self.size = 0
        self._fd = fd  # -1: in memory, no file yet (unnamed only)
        self._directory = directory
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._writable = True
        self._by_name = False
        self._readers: list[BinaryIO] = []
        self._closed = False

    @classmethod
    def create(cls, directory: str, *, named: bool = True) -> Spool:
        """Make the temp file (unnamed: later, if ever); raises OSError (the caller answers 451)."""
        if not named:
            return cls(os.path.join(directory, "(memory)"), -1, named=False, directory=directory)
        fd, path = _named_file(directory)
        return cls(path, fd)

    @property
    def in_memory(self) -> bool:
        """Is the content (still) only in memory?"""
        return self._fd < 0

    def _open_file(self) -> None:
        """The unnamed spool outgrew memory: give it a file (O_TMPFILE, else a named one)."""
        assert self._directory is not None
        if _O_TMPFILE:
            try:
                self._fd = os.open(self._directory, _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
            else:
                self.path = os.path.join(self._directory, "(unnamed)")
                return
        self._fd, self.path = _named_file(self._directory)
        self.named = True  # a name to unlink at close, though nobody reads it by name

    def write(self, data: bytes) -> None:
        """Append ``data`` (buffered in memory up to BUFFER_SIZE)."""
        if not self._writable:
            raise ValueError("spool is not open for writing")
        self._pending.append(data)
        self._pending_size += len(data)
        self.size += len(data)
        if self._pending_size >= BUFFER_SIZE:
            self._flush()

    def _flush(self) -> None:
        if self._fd < 0:
            self._open_file()
        pending, size = self._pending, self._pending_size
        self._pending = []
        self._pending_size = 0
        # One system call for the buffered pieces, without joining them (a copy of each).
        written = os.writev(self._fd, pending) if len(pending) <= _MAX_IOV else 0
        if written < size:  # a short write (or too many pieces): the rest, joined
            view = memoryview(b"".join(pending))[written:]
            while view:
                view = view[os.write(self._fd, view) :]

    def finish(self) -> None:
        """Flush and end writing; raises OSError if the disk refused the data."""
        if self._writable:
            self._writable = False
            if self._fd < 0:
                # Small enough to stay in memory: one piece, read back by chunks().
                self._pending[:] = [b"".join(self._pending)] if self._pending else []
                return
            self._flush()

    def lend(self) -> None:
        """The file is given to a filter by name: read it back by name from now on."""
        if not self.named:
            raise ValueError("an unnamed spool cannot be lent by name")
        self.finish()
        self._by_name = True

    def refresh_size(self) -> int:
        """Re-read the size from disk (a file-mode filter may have changed the file)."""
        self.size = os.stat(self.path).st_size
        return self.size

    def chunks(self, chunk_size: int = BUFFER_SIZE) -> Iterator[bytes]:
        """Yield the file's current content; updates ``size``."""
        self.finish()
        if self._fd < 0:
            data = self._pending[0] if self._pending else b""
            if len(data) <= chunk_size:  # the usual case: the message itself, no copy
                if data:
                    yield data
                return
            view = memoryview(data)
            for start in range(0, len(data), chunk_size):
                yield bytes(view[start : start + chunk_size])
            return
        if not self._by_name:
            offset = 0
            while chunk := os.pread(self._fd, chunk_size, offset):
                offset += len(chunk)
                yield chunk
            self.size = offset
            return
        reader = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed below or by close()
        self._readers.append(reader)
        try:
            self.size = os.fstat(reader.fileno()).st_size
            while True:
                chunk = reader.read(chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            reader.close()
            with contextlib.suppress(ValueError):
                self._readers.remove(reader)

    def close(self) -> None:
        """Close anything open and unlink the file. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        self._writable = False
        self._pending.clear()
        handles: list[io.IOBase | BinaryIO] = [*self._readers]
        self._readers.clear()
        for handle in handles:
            with contextlib.suppress(OSError):
                handle.close()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        if not self.named:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("couldn't remove spool file %s: %s", self.path, exc)

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


SPOOL_KIND = "proxsmtpd."
RECIPIENTS_KIND = "proxsmtpd-rcpt."  # the filter's RECIPIENTS_FILE (stages/filter/environment.py)
_KINDS = (SPOOL_KIND, RECIPIENTS_KIND)


def named_prefix(kind: str = SPOOL_KIND, pid: int | None = None) -> str:
    """``proxsmtpd.PID_``: the start of the names of this process's (or `pid`'s) files.

    The pid ends at the ``_``, so pid 12's prefix is not the start of pid 123's names, and
    the name stays word characters after ``proxsmtpd.``, as before.
    """
    return f"{kind}{os.getpid() if pid is None else pid}_"


def _named_file(directory: str) -> tuple[int, str]:
    """``proxsmtpd.PID_XXXXXXXX``: mkstemp opens it O_RDWR|O_EXCL, mode 0600, not inheritable."""
    return tempfile.mkstemp(prefix=named_prefix(), dir=directory)


def sweep_files(directory: str, pid: int) -> list[str]:
    """Remove the named files that process `pid` (a dead worker) left in `directory`.

    Only regular files of ours (our uid) are removed, never followed through a link; the
    caller makes sure no live process has `pid` (the supervisor calls it before it reaps
    the worker's zombie).  Returns the paths removed; never raises.
    """
    prefixes = tuple(named_prefix(kind, pid) for kind in _KINDS)
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        log.warning("couldn't look for spool files left in %s: %s", directory, exc)
        return removed
    for entry in entries:
        if not entry.name.startswith(prefixes):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("couldn't remove spool file %s: %s", entry.path, exc)
            continue
        removed.append(entry.path)
    return removed
