"""Typed protocol errors: whose fault it was decides what the I/O layer does next.

A `RemoteProtocolError` is the peer's fault and carries the reply to send the client (if any),
so the I/O layer never invents wire text.  A `LocalProtocolError` is our own bug: an event that
is illegal in our current state.  Neither is ever raised for well-formed traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.replies import Reply

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base of every error raised by the sans-IO protocol core."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; `reply` is what the client should be told (None: nothing)."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class LocalProtocolError(ProtocolError):
    """We tried to do something illegal for our state: a bug in the caller."""
