"""The milter macros of the client side's TLS (Postfix's names, docs/behaviour.md §6.6):
{tls_version}, {cipher}, {cipher_bits}, and {cert_subject}/{cert_issuer} when the client
presented a certificate that was verified."""

from __future__ import annotations

import trio

from trio_proxsmtp.common.tls_socket import TLS_STREAMS

__all__ = ["certificate_name", "client_name_macro", "tls_macros"]


def tls_macros(stream: trio.abc.Stream) -> dict[str, str]:
    """The TLS macros of a client stream; {} in plain text."""
    if not isinstance(stream, TLS_STREAMS):
        return {}
    macros: dict[str, str] = {}
    version = stream.version()
    if version:
        macros["{tls_version}"] = version
    cipher = stream.cipher()
    if cipher:
        macros["{cipher}"] = cipher[0]
        macros["{cipher_bits}"] = str(cipher[2])
    # getpeercert() is {} or None unless a certificate was asked for and verified.
    certificate = stream.getpeercert()
    if certificate:
        for macro, field in (("{cert_subject}", "subject"), ("{cert_issuer}", "issuer")):
            name = certificate_name(certificate.get(field, ()))
            if name:
                macros[macro] = name
    return macros


def certificate_name(name: object) -> str:
    """The common name of a subject or issuer as ssl's getpeercert() gives it (a tuple of
    RDNs, each a tuple of (attribute, value) pairs), as Postfix's macros carry it; ""
    without one."""
    if not isinstance(name, tuple):
        return ""
    for rdn in name:
        for pair in rdn if isinstance(rdn, tuple) else ():
            if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == "commonName":
                return str(pair[1])
    return ""


def client_name_macro(name: str | None, *, unix: bool) -> str:
    """{client_name}: the verified reverse name; Postfix's "unknown" without one (a
    lookup that failed: "[UNAVAILABLE]", "[TEMPUNAVAIL]"); "localhost" for a unix peer."""
    if unix:
        return "localhost"
    if not name or name.startswith("["):
        return "unknown"
    return name
