"""A socket address of a peer the proxy talks to outside SMTP (a milter, a scanner, a
policy service): ``inet:HOST:PORT`` (an IPv6 host in brackets) or ``unix:/PATH``, as
Milters writes it.  Raises ValueError with the reason; options.py makes it `Invalid`."""

from __future__ import annotations

from trio_proxsmtp.stages.settings import MilterAddress

__all__ = ["parse_milter_address"]


def parse_milter_address(text: str) -> MilterAddress:
    """Parse one ``Milters:`` entry; raises ValueError with the reason."""
    kind, colon, rest = text.partition(":")
    if not colon or not rest:
        raise ValueError(f"{text!r}: expected inet:host:port or unix:/path")
    kind = kind.lower()
    if kind in ("unix", "local"):
        if not rest.startswith("/"):
            raise ValueError(f"{text!r}: the unix socket path must be absolute")
        if len(rest.encode()) >= 108:
            raise ValueError(f"{text!r}: unix socket path too long")
        return MilterAddress(text, path=rest)
    if kind not in ("inet", "inet6"):
        raise ValueError(f"{text!r}: unknown milter socket type {kind!r} (inet or unix)")
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ValueError(f"{text!r}: expected inet:[address]:port")
        port_text = port_text[1:]
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r}: a port is required (expected inet:host:port)")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 host in brackets (inet:[::1]:port)")
    if not host:
        raise ValueError(f"{text!r}: a host is required")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: invalid port {port_text!r}")
    return MilterAddress(text, host=host, port=int(port_text))
