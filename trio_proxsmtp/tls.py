"""STARTTLS towards the client (extension options TLSCertificate and TLSKey).

proxsmtpd 1.10 strips STARTTLS: a proxy in front of the real server on port 25 then
takes TLS away from every sender.  With a certificate configured, the proxy offers
STARTTLS itself (RFC 3207) and speaks TLS to the client; the next server is spoken to as
before.  The context is built once per config load (by the config parser: at start, and
in SIGHUP's reload thread), not per connection.
"""

from __future__ import annotations

import ssl

__all__ = ["TLSError", "server_context"]


class TLSError(Exception):
    """The certificate or key cannot be used; the message names the file and the reason."""


def server_context(certificate: str, key: str) -> ssl.SSLContext:
    """A server-side context for `certificate` (PEM, chain after it) and its `key`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate, key)
    except ssl.SSLError as exc:  # (an OSError too: first)
        reason = exc.reason or str(exc)
        message = f"couldn't load certificate {certificate} with key {key}: {reason}"
        raise TLSError(message) from None
    except OSError as exc:
        name = exc.filename or certificate
        raise TLSError(f"couldn't read {name}: {exc.strerror or exc}") from None
    return context
