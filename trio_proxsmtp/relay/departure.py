"""The client's departure seen on its socket, without a watcher: one non-blocking peek
before a message's final "." goes upstream (relay/transaction.py), and, when the client
pipelined something after its message, a read of it into the reader to look behind it.

Its end of stream before the message was answered means it has left, whatever it
pipelined before (QUIT included: docs/behaviour.md §5).  Only a plain socket stream is
peeked at; under TLS the end of stream hides behind records, so the client channel
watches instead (client_channel.py `ClientChannel.watch`).
"""

from __future__ import annotations

import socket

import trio

from trio_proxsmtp.common.metrics import Metrics
from trio_proxsmtp.protocol.smtp.reader import ClientReader

__all__ = ["SocketPeek"]

# The flags as plain ints: `socket.MSG_PEEK | socket.MSG_DONTWAIT` is an IntFlag `|`, a
# Python call into enum.py on every peek.
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
_DONTWAIT = int(socket.MSG_DONTWAIT)


class SocketPeek:
    """Peeks at one accepted socket; built once per connection (a socket object per
    message cost a getsockname system call each time), detached, never closed."""

    __slots__ = ("_sock",)

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
