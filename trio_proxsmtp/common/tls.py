"""TLS contexts: towards the client (TLSCertificate/TLSKey) and towards the next server.

proxsmtpd 1.10 strips STARTTLS: a proxy in front of the real server on port 25 then
takes TLS away from every sender.  With a certificate configured, the proxy offers
STARTTLS itself (RFC 3207), or TLS from the first byte on a `ListenTLS` address
(RFC 8314), and speaks TLS to the client.

Towards the next server (`OutTLS`), `upstream_context` builds the client-side context:
certificate verification against `OutTLSCAFile` or the system store when `OutTLSVerify`
is on, an optional client certificate, TLS 1.2 at least.  The name checked is
`OutTLSServerName` or the OutAddress host; an IP address is checked against the
certificate's IP entries and never sent as SNI (RFC 6066 forbids it; Python's ssl module
omits it, `sni_name` says so for logs and tests).

Contexts are built once per config load (by the config parser: at start, and in
SIGHUP's reload thread), not per connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import ssl

__all__ = [
    "TLSError",
    "server_context",
    "sni_name",
    "system_ca_available",
    "upstream_context",
]


class TLSError(Exception):
    """A certificate, key or CA file cannot be used; the message names the file and why."""


def _load_chain(context: ssl.SSLContext, certificate: str, key: str) -> None:
    try:
        context.load_cert_chain(certificate, key)
    except ssl.SSLError as exc:  # (an OSError too: first)
        reason = exc.reason or str(exc)
        message = f"couldn't load certificate {certificate} with key {key}: {reason}"
        raise TLSError(message) from None
    except OSError as exc:
        name = exc.filename or certificate
        raise TLSError(f"couldn't read {name}: {exc.strerror or exc}") from None


def server_context(certificate: str, key: str) -> ssl.SSLContext:
    """A server-side context for `certificate` (PEM, chain after it) and its `key`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.2 renegotiation either way (deprecated, a known DoS vector): a write then
    # never has to read first (common/tls_socket.py).
    context.options |= ssl.OP_NO_RENEGOTIATION
    _load_chain(context, certificate, key)
    return context


def system_ca_available() -> bool:
    """True when OpenSSL's default CA file holds a certificate or its CA directory has files.

    A directory of hashed links is read lazily by OpenSSL, so `cert_store_stats` alone
    would call it empty.
    """
    paths = ssl.get_default_verify_paths()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if paths.cafile:
        with contextlib.suppress(ssl.SSLError, OSError):
            context.load_verify_locations(cafile=paths.cafile)
    if context.cert_store_stats()["x509_ca"] > 0:
        return True
    if paths.capath and os.path.isdir(paths.capath):
        try:
            return any(entry.is_file() for entry in os.scandir(paths.capath))
        except OSError:
            return False
    return False


def upstream_context(
    *,
    verify: bool,
    ca_file: str | None = None,
    certificate: str | None = None,
    key: str | None = None,
) -> ssl.SSLContext:
    """The client-side context for TLS to the next server.

    `verify`: check the certificate chain (against `ca_file`, or the system store when it
    is None) and the host name passed as ``server_hostname``; off, any certificate is taken
    (the connection is encrypted, not authenticated). `certificate`/`key`: a client
    certificate to present. TLS 1.2 at least. Raises `TLSError` for unusable files.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.2 renegotiation either way (deprecated, a known DoS vector): a write then
    # never has to read first (common/tls_socket.py).
    context.options |= ssl.OP_NO_RENEGOTIATION
    if verify:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        if ca_file is not None:
            try:
                context.load_verify_locations(cafile=ca_file)
            except ssl.SSLError as exc:
                reason = exc.reason or str(exc)
                raise TLSError(f"couldn't load CA certificates from {ca_file}: {reason}") from None
            except OSError as exc:
                raise TLSError(f"couldn't read {ca_file}: {exc.strerror or exc}") from None
            if context.cert_store_stats()["x509"] == 0:
                raise TLSError(f"no certificate in {ca_file}")
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if (certificate is None) != (key is None):
        raise TLSError("a client certificate needs both the certificate and its key")
    if certificate is not None and key is not None:
        _load_chain(context, certificate, key)
    return context


def sni_name(server_hostname: str | None) -> str | None:
    """What goes out as SNI for `server_hostname`: the name itself, None for an IP address."""
    if server_hostname is None:
        return None
    try:
        ipaddress.ip_address(server_hostname.strip("[]"))
    except ValueError:
        return server_hostname
    return None
