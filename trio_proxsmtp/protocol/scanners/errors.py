"""The error a scanner's answer raises when it cannot be read."""

from __future__ import annotations

from trio_proxsmtp.protocol.errors import RemoteProtocolError

__all__ = ["ScannerProtocolError"]


class ScannerProtocolError(RemoteProtocolError):
    """A scanner answered something we cannot read (garbage, a cut answer, an ERROR): a
    scanner failure, which gets ScannerDefaultAction."""
