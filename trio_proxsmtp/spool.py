"""A message on disk: the body is spooled to a 0600 temp file and streamed, never held whole.

Disk I/O here is synchronous on purpose. Writes land in the page cache and take microseconds;
handing every chunk to a worker thread (``trio.to_thread``) would cost more than the write
itself. The buffers are large (256 KiB) so a message costs few system calls.

The file is read back by *name*, not through the write handle, because a file-mode filter may
have edited it in place or replaced it with ``mv`` (spec §9.5).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO

log = logging.getLogger("trio_proxsmtp.spool")

BUFFER_SIZE = 256 * 1024


class Spool:
    """One temp file ``<directory>/proxsmtpd.XXXXXX`` (mode 0600, close-on-exec)."""

    path: str
    size: int

    def __init__(self, path: str, writer: BinaryIO | None) -> None:
        self.path = path
        self.size = 0
        self._writer = writer
        self._readers: list[BinaryIO] = []
        self._closed = False

    @classmethod
    def create(cls, directory: str) -> Spool:
        """Make the temp file; raises OSError (the caller answers 451)."""
        # mkstemp opens O_EXCL with mode 0600, and Python fds are non-inheritable (O_CLOEXEC).
        fd, path = tempfile.mkstemp(prefix="proxsmtpd.", dir=directory)
        try:
            writer = open(fd, "wb", buffering=BUFFER_SIZE)  # noqa: SIM115 - closed by close()
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        return cls(path, writer)

    def write(self, data: bytes) -> None:
        """Append ``data`` (buffered)."""
        if self._writer is None:
            raise ValueError("spool is not open for writing")
        self._writer.write(data)
        self.size += len(data)

    def finish(self) -> None:
        """Flush and close the write side; raises OSError if the disk refused the data."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def refresh_size(self) -> int:
        """Re-read the size from disk (a file-mode filter may have changed the file)."""
        self.size = os.stat(self.path).st_size
        return self.size

    def chunks(self, chunk_size: int = BUFFER_SIZE) -> Iterator[bytes]:
        """Yield the file's current content, reopened by name; updates ``size``."""
        if self._writer is not None:
            self.finish()
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
        handles: list[io.IOBase | BinaryIO] = [*self._readers]
        if self._writer is not None:
            handles.append(self._writer)
        self._writer = None
        self._readers.clear()
        for handle in handles:
            try:
                handle.close()
            except OSError as exc:  # a failed final flush: the data is being thrown away anyway
                log.debug("closing spool %s: %s", self.path, exc)
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
