"""proxsmtpd.conf parsing: one frozen Config; nothing else in the program reads the file.

CONTRACT (fields are used by relay/server/filter; do not rename):
"""

from __future__ import annotations

import enum

import attrs

from trio_proxsmtp.address import Address


class FilterType(enum.Enum):
    PIPE = "pipe"
    FILE = "file"
    REJECT = "reject"


class TransparentMode(enum.Enum):
    OFF = "off"
    CLIENT = "client"
    FULL = "full"


@attrs.frozen
class Config:
    """Every option of proxsmtpd 1.10 plus our extensions, with proxsmtpd's defaults."""

    out_address: Address | None = None
    listen: Address = ...  # default: port-only 10025 on all interfaces
    filter_command: str | None = None  # empty value in the file means None
    filter_type: FilterType = FilterType.PIPE
    filter_timeout: float = 30.0
    filter_reject: str = "530 Email Rejected"  # raw text; normalised by the protocol layer
    header: str | None = None  # raw template, None when unset or empty
    keep_alives: float = 0.0  # 0 = off
    max_connections: int = 64
    pid_file: str | None = None
    skip_authenticated: bool = False
    temp_directory: str = "/tmp/"
    timeout: float = 180.0
    transparent_proxy: TransparentMode = TransparentMode.OFF
    user: str | None = None
    xclient: bool = False
    shutdown_timeout: float = 30.0  # extension: graceful drain on SIGTERM
    path: str = "/etc/proxsmtpd.conf"  # the file this came from
