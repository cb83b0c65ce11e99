"""The client's departure seen on its socket, without a watcher: one non-blocking peek
before a message's final "." goes upstream (relay/transaction.py), and, when the client
pipelined something after its message, a read of it into the reader to look behind it.

Its end of stream before the message was answered means it has left, whatever it
pipelined before (QUIT included: docs/behaviour.md §5).  A plain socket is peeked at
(`SocketPeek`); under TLS on a socket (common/tls_socket.py) the end of stream hides
behind records, so `TLSPeek` reads what OpenSSL has without waiting (a close_notify, a
bare close, or pipelined bytes, which go into the reader as a watcher's would).  Any
other stream (trio's TLS on a test's memory stream) is watched instead
(client_channel.py `ClientChannel.watch`), which costs a task per message.
"""

from __future__ import annotations

import socket

import trio

from trio_proxsmtp.common.metrics import Metrics
from trio_proxsmtp.common.tls_socket import SocketTLSStream
from trio_proxsmtp.protocol.smtp.reader import ClientReader
from trio_proxsmtp.relay.tls_streams import closed_without_notify

__all__ = ["SocketPeek", "TLSPeek"]

# The flags as plain ints: `socket.MSG_PEEK | socket.MSG_DONTWAIT` is an IntFlag `|`, a
# Python call into enum.py on every peek.
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
_DONTWAIT = int(socket.MSG_DONTWAIT)


class SocketPeek:
    """Peeks at one accepted socket; built once per connection (a socket object per
    message cost a getsockname system call each time), detached, never closed."""

    __slots__ = ("_sock",)

    usable = True  # after its end, our replies can still go (in clear, always: §11.20)

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())

    def left(self, reader: ClientReader, metrics: Metrics, *, keep: int, size: int) -> bool:
        """Whether the client's end of stream (or a reset) is there: one system call when
        nothing is pending; pipelined bytes go into `reader` (up to `keep` bytes, as a
        watcher keeps them, read `size` at a time) to look behind them."""
        sock = self._sock
        try:
            if sock.recv(1, _PEEK) == b"":
                return True
        except BlockingIOError:
            return False
        except OSError:
            return True
        while reader.buffered_size < keep:
            try:
                data = sock.recv(size, _DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                reader.discard_buffered()
                return True
            if not data:
                return True
            metrics.bytes_received("client", len(data))
            reader.feed(data)
        return False

    def detach(self) -> None:
        """The descriptor is the stream's to close."""
        self._sock.detach()


class TLSPeek:
    """Looks for the end of a TLS client stream without waiting: what OpenSSL can read now
    goes into the reader (up to `keep` bytes); `usable` says, once it ended, whether our
    replies can still go (only after the client's close_notify: a bare close or a reset
    breaks the TLS stream), as `ClientChannel.watch` does."""

    __slots__ = ("_stream", "usable")

    def __init__(self, stream: SocketTLSStream) -> None:
        self._stream = stream
        self.usable = True

    def left(self, reader: ClientReader, metrics: Metrics, *, keep: int, size: int) -> bool:
        stream = self._stream
        while reader.buffered_size < keep:
            try:
                data = stream.try_receive(size)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.usable = False
                if not closed_without_notify(exc):
                    reader.discard_buffered()  # a reset
                return True
            if data is None:
                return False
            if not data:
                return True  # its close_notify
            if metrics.enabled:
                metrics.bytes_received("client", len(data))
            reader.feed(data)
        return False

    def detach(self) -> None:
        """Nothing to let go: the stream is the channel's."""
