"""The relay's public names, from the modules that own them (see docs/architecture.md)."""

from __future__ import annotations

from trio_proxsmtp.client_channel import ClientGone
from trio_proxsmtp.client_info import NAME_LOOKUP_TIMEOUT, ClientInfo, client_host_name
from trio_proxsmtp.connection import Connection
from trio_proxsmtp.upstream import IP_TRANSPARENT, UpstreamFailure

__all__ = [
    "IP_TRANSPARENT",
    "NAME_LOOKUP_TIMEOUT",
    "ClientGone",
    "ClientInfo",
    "Connection",
    "UpstreamFailure",
    "client_host_name",
]
