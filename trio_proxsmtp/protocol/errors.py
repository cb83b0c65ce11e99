"""One root for the errors of the whole proxy, and whose fault each one is.

`ProxyError` is the root: every error of ours that ends a connection (or a stage of one)
derives from it and carries `reply`, what the client is told before the close (None: the
connection closes without a word, e.g. the client already left).  The connection loop has
one `except ProxyError` that sends `reply` and closes; no layer invents wire text for
another.

Whose fault it was decides the log line and the metrics, not the code path:
- `RemoteError`: a peer broke the rules: the client, the next server, a milter, a load
  balancer's PROXY header.  Expected in production; logged, never a traceback.
- `LocalError`: ours: a bug (an input illegal in the session's state), or a resource we
  lack.

The sans-IO core raises the `ProtocolError` pair: `RemoteProtocolError` for bytes a peer
sent that cannot be taken, `LocalProtocolError` for an input illegal in our state.  Neither
is raised for well-formed traffic.
"""

from __future__ import annotations

from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = [
    "LocalError",
    "LocalProtocolError",
    "ProtocolError",
    "ProxyError",
    "RemoteError",
    "RemoteProtocolError",
]


class ProxyError(Exception):
    """The root; `reply` is what the client gets before the connection closes (or None)."""

    def __init__(self, message: str = "", reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class RemoteError(ProxyError):
    """A peer's fault: the client, the next server, a milter, a balancer."""


class LocalError(ProxyError):
    """Our fault: a bug or a missing resource."""


class ProtocolError(ProxyError):
    """Base of every error raised by the sans-IO protocol core."""


class RemoteProtocolError(ProtocolError, RemoteError):
    """The peer broke the protocol; `reply` is what the client should be told (None: nothing)."""


class LocalProtocolError(ProtocolError, LocalError):
    """We tried to do something illegal for our state: a bug in the caller."""
