"""How the client side of a connection ends: the client gone, timed out, or drained at
shutdown (raised by the client channel, client_channel.py)."""

from __future__ import annotations

import logging

from trio_proxsmtp.protocol.errors import ProxyError, RemoteError
from trio_proxsmtp.relay.endings import CLIENT_TIMEOUT, SHUTTING_DOWN, Ending
from trio_proxsmtp.relay.tls_streams import closed_without_notify

__all__ = ["ClientGone", "ClientTimeout", "Drained"]


class ClientGone(Ending, RemoteError):
    """The client closed or reset the connection: there is nobody left to tell."""

    level = logging.INFO
    log_format = "client disconnected: %s"
    ended = "client disconnected"


def stream_gone(exc: Exception) -> ClientGone:
    """The `ClientGone` for a stream error (`BrokenResourceError`, `ClosedResourceError`)."""
    if closed_without_notify(exc):  # under TLS: a close, not a reset
        return ClientGone("closed the connection")
    return ClientGone(str(exc) or "connection reset")


class ClientTimeout(Ending, RemoteError):
    """The client said nothing for TimeOut seconds, or a record's deadline passed; the
    message says which.  The client is told so (421 4.4.2)."""

    log_format = "network operation timed out: %s"
    ended = "client timed out"

    def __init__(self, message: str) -> None:
        super().__init__(message, CLIENT_TIMEOUT)


class Drained(Ending, ProxyError):
    """Shutdown reached a session waiting for its next command: it ends with 421 4.3.2.
    Nobody's fault (a `ProxyError`, neither remote nor local)."""

    level = logging.INFO
    log_format = "shutting down: %s"

    def __init__(self) -> None:
        super().__init__("closing an idle session", SHUTTING_DOWN)
