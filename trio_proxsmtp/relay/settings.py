"""The relay's settings types: what the configuration decides for a connection, built by
`config/` (which may import this module, never the relay's I/O)."""

from __future__ import annotations

import enum

__all__ = ["OutTLSMode", "TransparentMode"]


class OutTLSMode(enum.Enum):
    """`OutTLS`: how the proxy talks to the next server (as Postfix's smtp_tls_security_level).

    MAY: STARTTLS when the next server offers it, plain text when it does not.
    ENCRYPT: STARTTLS or no mail (4xx to the client).
    IMPLICIT: TLS from the first byte (RFC 8314), e.g. to port 465.
    """

    OFF = "off"
    MAY = "may"
    ENCRYPT = "encrypt"
    IMPLICIT = "implicit"


class TransparentMode(enum.Enum):
    OFF = "off"
    CLIENT = "client"
    FULL = "full"
