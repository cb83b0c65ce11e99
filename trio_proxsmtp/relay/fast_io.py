"""Optimistic socket I/O: try the system call first, wait only if it would block (issue 15).

On a loopback or a busy LAN the bytes are usually there already (or the send buffer has
room), so a plain `trio.SocketStream` read or write through trio costs a timeout scope, a
conflict detector, two checkpoints and a task switch around one system call.  `FastPath`
tries the non-blocking call on the socket's file descriptor first; the caller takes the
normal path (its cancel scope and trio's wait) only when it would block, and for memory
streams and `trio.SSLStream`.  TLS on a socket (common/tls_socket.py) has the same fast
calls: OpenSSL's read or write of the socket, without waiting.  What stays the same:

* cancellation: `checkpoint_if_cancelled` before every fast call, so a cancelled scope
  (shutdown, the client leaving, a drain) is seen exactly where trio would see it;
* fairness: after `FAIR_EVERY` fast calls in a row, one takes the normal path, which
  yields to other tasks (a call that would block waits, and so yields, anyway);
* errors: those of `SocketStream` (a closed socket is `ClosedResourceError`, any other
  OSError `BrokenResourceError`); end of file is b"".

Deadlines are the caller's: it takes the normal path when its deadline has passed.
"""

from __future__ import annotations

import errno
import os
import socket

import trio

from trio_proxsmtp.common.tls_socket import SocketTLSStream

__all__ = ["FAIR_EVERY", "FastPath"]

FAIR_EVERY = 8
_CLOSED = {errno.EBADF, errno.ENOTSOCK}


def _broken(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in _CLOSED:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class FastPath:
    """The fast calls of one connection side (one counter for fairness)."""

    __slots__ = ("_blocked", "_calls", "_raw", "_stream", "_tls")

    def __init__(self) -> None:
        self._calls = 0  # fast calls since the last normal one
        self._blocked = False  # the last receive would have blocked
        # The stream last asked about and its stdlib socket (None: not a SocketStream, or
        # a trio without `_sock`): looked up once per stream, not per call (trio's
        # `fileno` is a Python method, two a read or write).  Its `fileno()` is -1 once
        # trio closed it, so a closed socket is never written to by number.
        self._stream: trio.abc.Stream | None = None
        self._raw: socket.socket | None = None
        # Or the stream is TLS on a socket: its own calls that do not wait.
        self._tls: SocketTLSStream | None = None

    def _go(self, stream: trio.abc.Stream) -> bool:
        """Whether to try the call at once, on `_raw` or, for TLS on a socket, `_tls`;
        False: take the normal path."""
        if stream is not self._stream:
            self._stream = stream
            raw = (
                getattr(stream.socket, "_sock", None)
                if isinstance(stream, trio.SocketStream)
                else None
            )
            self._raw = raw if isinstance(raw, socket.socket) else None
            self._tls = stream if isinstance(stream, SocketTLSStream) else None
        if self._raw is None and self._tls is None:
            return False
        self._calls += 1
        if self._calls >= FAIR_EVERY:
            self._calls = 0
            return False
        return True

    async def receive(
        self, stream: trio.abc.Stream, size: int, *, later: bool = False
    ) -> bytes | None:
        """What is waiting (b"": end of file), or None: the caller waits the normal way
        (`receive_waiting`).  `later`: the answer to what was just sent, which is not
        there yet: let the other tasks run first (one trip through the run queue), and
        it usually is by then; waiting at once would cost an epoll registration and a
        wake-up for nearly every answer."""
        self._blocked = False
        if not self._go(stream):
            return None
        if later:
            await trio.lowlevel.checkpoint()
            self._calls = 0  # this one yielded
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        tls = self._tls
        if tls is not None:
            data = tls.try_receive(size)  # (TLS: its errors are the stream's)
            if data is None:
                self._calls = 0
                self._blocked = True
            return data
        raw = self._raw
        assert raw is not None
        fd = raw.fileno()
        if fd < 0:
            return None
        try:
            return os.read(fd, size)
        except BlockingIOError:
            self._calls = 0
            self._blocked = True
            return None
        except OSError as exc:
            raise _broken(exc) from exc

    async def send(self, stream: trio.abc.Stream, data: bytes) -> int:
        """How many bytes of `data` were written at once; the caller sends the rest the
        normal way (all of it when 0)."""
        if not data or not self._go(stream):
            return 0
        await trio.lowlevel.checkpoint_if_cancelled()
        tls = self._tls
        if tls is not None:
            sent = tls.try_send(data)  # all or nothing: OpenSSL wants the rest again whole
            if not sent:
                self._calls = 0
            return sent
        raw = self._raw
        assert raw is not None
        fd = raw.fileno()
        if fd < 0 or stream.socket.did_shutdown_SHUT_WR:  # type: ignore[attr-defined]
            return 0
        try:
            return os.write(fd, data)
        except BlockingIOError:
            self._calls = 0
            return 0
        except OSError as exc:
            raise _broken(exc) from exc

    async def receive_waiting(self, stream: trio.abc.Stream, size: int) -> bytes:
        """The normal path, in the caller's cancel scope.  After a receive that would have
        blocked: wait for bytes, then read them with one system call (no second try of the
        read, and none of `receive_some`'s checkpoint, which would yield to the run loop a
        second time); otherwise (fairness, TLS, memory streams) the stream's own read."""
        if self._blocked and isinstance(stream, SocketTLSStream):
            self._blocked = False
            return await stream.receive_blocked(size)
        if self._blocked and isinstance(stream, trio.SocketStream):
            self._blocked = False
            sock = stream.socket
            while True:
                await trio.lowlevel.wait_readable(sock)
                fd = sock.fileno()
                if fd < 0:
                    raise trio.ClosedResourceError("this socket was already closed")
                try:
                    return os.read(fd, size)
                except BlockingIOError:
                    continue  # woken without bytes after all: wait again
                except OSError as exc:
                    raise _broken(exc) from exc
        return bytes(await stream.receive_some(size))
