"""TLS on a socket, driven by OpenSSL directly: the relay's TLS stream (issue 26).

`trio.SSLStream` runs OpenSSL over memory buffers: every read or write of a TLS record goes
through Python twice (the ciphertext copied between the socket and a `MemoryBIO`, then the
plain text out of the `SSLObject`), under locks and conflict detectors, and costs several
times the plain socket call (0.6x the plain rate with 4 KB messages, bench/README.md).
`SocketTLSStream` hands OpenSSL the socket itself (a non-blocking `ssl.SSLSocket` on a
duplicate of the connection's descriptor): one C call reads or writes, and trio is asked to
wait only when OpenSSL says it would block (`SSLWantReadError`/`SSLWantWriteError`).  What
the rest of the relay relies on stays as it was (docs/behaviour.md §11.21):

* a `trio.abc.Stream`: `receive_some`, `send_all`, `wait_send_all_might_not_block`,
  `aclose`, and `do_handshake`; the details `version()`, `cipher()`, `getpeercert()`,
  `session`, `session_reused` as on `trio.SSLStream`;
* errors: a failed handshake, a reset or a peer leaving without a close_notify is
  `trio.BrokenResourceError` caused by the `ssl`/OS error (`ssl.SSLEOFError` for the bare
  close, which `relay/tls_streams.closed_without_notify` tells from a reset); the peer's
  close_notify is end of stream (b""); a closed stream is `trio.ClosedResourceError`;
* `aclose` sends one close_notify and does not wait for the peer's, then closes the
  connection (the transport stream too), even when cancelled;
* one task may receive while another sends (the client's departure watch reads while
  replies go out): a receive that must write (or a send that must read: a TLS 1.2
  renegotiation, a TLS 1.3 key update) waits for the socket under the same lock as the
  other direction's waits, so two tasks never wait on one direction at once.

`try_receive`/`try_send` are the non-waiting calls of the relay's optimistic I/O
(relay/fast_io.py): the same C call without a checkpoint.  A stream that is not a plain
socket (a test's memory stream) takes `trio.SSLStream` instead (relay/tls_streams.py).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import trio

__all__ = ["TLS_STREAMS", "SocketTLSStream", "is_tls_stream"]

_R = TypeVar("_R")

# OpenSSL 3 gives a bare close its own reason; before, it was a failed system call too.
_EOF_HAS_REASON = ssl.OPENSSL_VERSION_INFO >= (3,)


def is_tls_stream(stream: trio.abc.Stream) -> bool:
    """Whether `stream` is under TLS (ours or Trio's): it has `version()`, `cipher()` and
    `getpeercert()`."""
    return isinstance(stream, TLS_STREAMS)


class SocketTLSStream(trio.abc.Stream):
    """TLS over the socket of `transport` (module docstring); no handshake yet."""

    def __init__(
        self,
        transport: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport
        raw = socket.socket(fileno=os.dup(transport.socket.fileno()))
        try:
            raw.setblocking(False)
            self._ssl = context.wrap_socket(
                raw,
                server_side=server_side,
                server_hostname=server_hostname,
                do_handshake_on_connect=False,
                suppress_ragged_eofs=False,  # a bare close is an error, not end of stream
            )
        except BaseException:
            raw.close()  # (a context that refuses: no descriptor left for the collector)
            raise
        self._fd = self._ssl.fileno()
        self._read = self._ssl.read
        self._write = self._ssl.write
        self._handshook = False
        self._want: ssl.SSLError = ssl.SSLWantReadError()  # what the last try waited for
        self._broken: BaseException | None = None
        self._closed = False
        # Waits on the socket, one task per direction (module docstring).
        self._readable = trio.Lock()
        self._writable = trio.Lock()

    # -- what trio.SSLStream forwards to its SSLObject ------------------------------------

    def version(self) -> str | None:
        return self._ssl.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return self._ssl.cipher()

    def getpeercert(self) -> dict[str, Any] | None:
        return self._ssl.getpeercert()

    @property
    def session(self) -> ssl.SSLSession | None:
        return self._ssl.session

    @session.setter
    def session(self, value: ssl.SSLSession | None) -> None:
        self._ssl.session = value

    @property
    def session_reused(self) -> bool:
        return bool(self._ssl.session_reused)

    # -- the calls that do not wait -------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this TLS stream was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("this TLS stream is broken") from self._broken

    def _fail(self, exc: BaseException) -> trio.BrokenResourceError:
        """The stream is broken by `exc` (the new error's cause, as `raise ... from`)."""
        reason: str | None = getattr(exc, "reason", None)
        if isinstance(exc, ssl.SSLEOFError) and reason is None and _EOF_HAS_REASON:
            # A failed system call, which Python's ssl reports as an EOF (it drops the
            # errno of a failed `SSL_read_ex`): a reset.  OpenSSL 3 names a bare close
            # UNEXPECTED_EOF_WHILE_READING.
            exc = ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET))
        self._broken = exc
        return trio.BrokenResourceError(f"TLS stream broken: {exc}")

    def try_receive(self, size: int) -> bytes | None:
        """The plain text waiting (b"": the peer's close_notify), or None: it would block.
        The handshake must be done."""
        self._check()
        try:
            return self._read(size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
            self._want = exc
            return None
        except (ssl.SSLError, OSError) as exc:
            raise self._fail(exc) from self._broken

    def try_send(self, data: bytes | memoryview) -> int:
        """`len(data)` once OpenSSL took it all, or 0: it would block, and the same bytes
        must be offered again (`send_all`: OpenSSL requires the same write repeated)."""
        self._check()
        try:
            return self._write(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return 0
        except (ssl.SSLError, OSError) as exc:
            raise self._fail(exc) from self._broken

    # -- waiting ----------------------------------------------------------------------

    async def _wait(self, exc: ssl.SSLError) -> None:
        """Wait for what OpenSSL asked for, one task per direction."""
        if isinstance(exc, ssl.SSLWantReadError):
            async with self._readable:
                await trio.lowlevel.wait_readable(self._fd)
        else:
            async with self._writable:
                await trio.lowlevel.wait_writable(self._fd)

    async def do_handshake(self) -> None:
        """The TLS handshake (once; later calls return at once)."""
        self._check()
        if self._handshook:
            await trio.lowlevel.checkpoint()
            return
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            await self._retry(None, self._ssl.do_handshake)
        except BaseException as exc:
            # Failed, timed out or cancelled: the stream is of no more use, and its
            # descriptor is let go now, not when the object is collected (the caller
            # closes the connection's own, which alone would not end the connection).
            if self._broken is None:
                self._broken = exc
            self._discard_unread()
            self._let_go()
            raise
        self._handshook = True
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _retry(self, want: ssl.SSLError | None, call: Callable[..., _R], *args: Any) -> _R:
        """`call(*args)` (after waiting for `want`, if given) until OpenSSL no longer asks
        to wait: then the same call again, as OpenSSL requires.  Errors break the stream;
        a close meanwhile is `ClosedResourceError`."""
        while True:
            if want is not None:
                try:
                    await self._wait(want)
                except trio.ClosedResourceError:
                    raise trio.ClosedResourceError("this TLS stream was closed") from None
                self._check()
            try:
                return call(*args)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                want = exc
            except (ssl.SSLError, OSError) as exc:
                raise self._fail(exc) from self._broken

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._handshook:
            await self.do_handshake()
        size = 65536 if max_bytes is None else max_bytes
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check()
        data: bytes = await self._retry(None, self._read, size)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    async def receive_blocked(self, size: int) -> bytes:
        """After `try_receive` found nothing: wait for what OpenSSL asked for, then read
        (the wait is the checkpoint; no second one, as `relay/fast_io.py` does in clear)."""
        data: bytes = await self._retry(self._want, self._read, size)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self._handshook:
            await self.do_handshake()
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check()
        view = memoryview(data)
        while view:
            sent: int = await self._retry(None, self._write, view)
            view = view[sent:]
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        self._check()
        async with self._writable:
            await trio.lowlevel.wait_writable(self._fd)

    # -- closing ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """One close_notify (not waiting for the peer's), then the connection closes, even
        if this is cancelled while the alert waits for room to be sent."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if self._handshook and self._broken is None:
                await self._notify()
            else:
                await trio.lowlevel.checkpoint()
        finally:
            self._closed = True
            self._let_go()
            self.transport_stream.socket.close()

    def _discard_unread(self) -> None:
        """Read away (a bounded amount of) what the peer sent that OpenSSL left unread
        after a failed handshake: closing a socket with unread bytes resets the
        connection, where the peer should see a plain close."""
        for _ in range(16):
            try:
                if not os.read(self._fd, 65536):
                    return
            except OSError:
                return

    def _let_go(self) -> None:
        """Close our descriptor (once), waking any task waiting on it."""
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)
            self._ssl.close()
            self._fd = -1

    async def _notify(self) -> None:
        """Send our close_notify; the peer's is not awaited (its read would block)."""
        while True:
            try:
                self._ssl.unwrap()
            except ssl.SSLWantWriteError as exc:
                await self._wait(exc)
                continue
            except (ssl.SSLWantReadError, ssl.SSLError, OSError):
                pass  # ours is sent; the peer's is not there yet, or it has gone
            await trio.lowlevel.checkpoint()
            return


# The classes of a stream under TLS, for isinstance (ours, and Trio's on other streams).
TLS_STREAMS = (SocketTLSStream, trio.SSLStream)
