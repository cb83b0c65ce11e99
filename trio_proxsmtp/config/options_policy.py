"""The value of PolicyService (docs/behaviour.md §11.9): ``inet:HOST:PORT`` (an IPv6 host
in brackets) or ``unix:/PATH``, as Postfix's ``check_policy_service`` takes it; empty for
none.  Raises ValueError with the reason (options.py makes it `Invalid`)."""

from __future__ import annotations

from trio_proxsmtp.config.addresses import parse_milter_address
from trio_proxsmtp.stages.settings import MilterAddress

__all__ = ["parse_policy_service"]


def parse_policy_service(value: str) -> MilterAddress | None:
    text = value.strip()
    if not text:
        return None
    # Only Postfix's two forms (no "local:", "inet6:"), and one address.
    kind, colon, rest = text.partition(":")
    if not colon or not rest or kind.lower() not in ("inet", "unix") or " " in text:
        raise ValueError(f"{text!r}: expected inet:host:port or unix:/path")
    return parse_milter_address(text)
