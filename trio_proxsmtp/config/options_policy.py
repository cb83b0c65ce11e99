"""The value of PolicyService (docs/behaviour.md §11.9): ``inet:HOST:PORT`` (an IPv6 host
in brackets) or ``unix:/PATH``, as Postfix's ``check_policy_service`` takes it; empty for
none.  Raises ValueError with the reason (options.py makes it `Invalid`)."""

from __future__ import annotations

from trio_proxsmtp.stages.settings import MilterAddress

__all__ = ["parse_policy_service"]


def parse_policy_service(value: str) -> MilterAddress | None:
    text = value.strip()
    if not text:
        return None
    kind, colon, rest = text.partition(":")
    if not colon or not rest or kind.lower() not in ("inet", "unix") or " " in text:
        raise ValueError(f"{text!r}: expected inet:host:port or unix:/path")
    if kind.lower() == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"{text!r}: the unix socket path must be absolute")
        if len(rest.encode()) >= 108:
            raise ValueError(f"{text!r}: unix socket path too long")
        return MilterAddress(text, path=rest)
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ValueError(f"{text!r}: expected inet:[address]:port")
        port_text = port_text[1:]
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(f"{text!r}: expected inet:host:port (an IPv6 host in brackets)")
    if not host:
        raise ValueError(f"{text!r}: a host is required")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: invalid port {port_text!r}")
    return MilterAddress(text, host=host, port=int(port_text))
