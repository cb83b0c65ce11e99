"""The `-t` checks of the native scanners and of `FilterType: smtp` (docs/behaviour.md
§11.16, §11.17): the addresses' syntax is the parser's; here, a unix socket that does not
exist (yet: the scanner may start after us) is a warning, and an SMTP filter's address
that is none of HOST:PORT, [IPv6]:PORT or a path is an error."""

from __future__ import annotations

import os
import stat

from trio_proxsmtp.common.address import AddressKind, parse_address
from trio_proxsmtp.config.model import Config, ConfigError
from trio_proxsmtp.stages.settings import FilterType

__all__ = ["check_scanners", "check_smtp_filter"]


def _socket_missing(path: str) -> str | None:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return exc.strerror or str(exc)
    return None if stat.S_ISSOCK(mode) else "not a socket"


def check_scanners(config: Config) -> list[str]:
    """Warnings for each scanner's unix socket that is not there."""
    warnings: list[str] = []
    for scanner in config.scanners:
        path = scanner.address.path
        if path is not None and (problem := _socket_missing(path)) is not None:
            warnings.append(f"Scanners: {scanner.text}: {path}: {problem} (is it running?)")
    return warnings


def check_smtp_filter(config: Config, line: int | None = None) -> list[str]:
    """FilterType: smtp: FilterCommand is the filter server's address."""
    command = config.filter_command
    if command is None or config.filter_type is not FilterType.SMTP:
        return []
    try:
        address = parse_address(command, 25)
    except ValueError as exc:
        raise ConfigError(
            config.path,
            line,
            "FilterCommand",
            f"FilterType: smtp takes the filter server's address (HOST:PORT, [IPv6]:PORT "
            f"or a unix socket path): {exc}",
        ) from None
    if address.kind is AddressKind.UNIX and address.path is not None:
        problem = _socket_missing(address.path)
        if problem is not None:
            return [f"FilterCommand: {address.path}: {problem} (is the filter server running?)"]
    return []
