"""proxsmtpd.conf parsing: one frozen Config; nothing else in the program reads the file.

Syntax and options follow proxsmtpd 1.10 (docs/behaviour.md §2): `Name: value` per line, the first
":" separates, names are case-insensitive, `#` only at the start of a line, the last
duplicate wins. Where the reference is wrong we choose (and `proxsmtpd.conf.example` says so):
an empty `FilterCommand:` means no filter (B22), `MaxConnections` accepts 1..10239 (B23),
an empty `FilterReject:` means the default, a missing config file is an error rather than a
warning, and an unresolvable host name is an error, as is a TempDirectory the daemon cannot
create files in (checks.py; docs/behaviour.md §2). Every error is a ConfigError naming the
file, the line and the option. Warnings that should not stop the daemon are returned by the
`*_with_warnings` functions, never printed here.

Extensions: `ShutdownTimeout` and `Workers` (1..64 processes sharing the listener; it may
not exceed MaxConnections, which is shared out between the workers); `ProxyProtocol` and
`ProxyProtocolFrom` (a load balancer's PROXY header, daemon/proxy_protocol.py);
`MetricsListen` (Prometheus metrics over HTTP, daemon/prometheus.py); TLS towards clients
(`TLSCertificate`/`TLSKey`, `ListenTLS`) and towards the next server (`OutTLS*`), whose
contexts are built once per load (checks.py) so that `-t` and SIGHUP catch unusable files;
`Chunking`; and the milter options `Milters` (comma-separated ``inet:host:port`` /
``unix:/path``), `MilterDefaultAction` (tempfail, accept or reject) and
`MilterConnectTimeout` / `MilterCommandTimeout` / `MilterContentTimeout` (seconds); and the
limits that bound what a hostile client can hold (MaxRecipients, MaxConnectionsPerClient with
ConnectionLimitExceptions, HardErrorLimit, CommandTimeOut, ReplyTimeOut, MinDataRate,
SessionTimeOut, StressTimeOut); and what the next hop learns of the client: `XForward`
(XFORWARD before each MAIL) and `OutProxyProtocol` (off, v1 or v2: a PROXY header first).
`Workers: auto`, the default, is resolved at load to one worker per core this process may
run on (capped by MAX_WORKERS and MaxConnections), so `Config.workers` is always a count.

The package's parts: `model.py` (`Config`, its defaults, `ConfigError`), `options.py` (the
option table and value parsers), `checks.py` (the checks after parsing, the TLS contexts),
this module (reading and parsing, the warnings), and `settings.py` (every layer's settings,
built from a `Config` there and nowhere else).
"""

from __future__ import annotations

from typing import Any

import attrs

from trio_proxsmtp.config.checks import (
    check_filter_program,
    check_listen_tls,
    check_message_timeout,
    check_temp_directory,
    out_tls_context,
    server_tls_context,
)
from trio_proxsmtp.config.checks_scanners import check_scanners, check_smtp_filter
from trio_proxsmtp.config.model import Config, ConfigError
from trio_proxsmtp.config.options import AUTO, OPTIONS, Invalid
from trio_proxsmtp.relay.settings import TransparentMode

__all__ = [
    "load_config",
    "load_config_with_warnings",
    "parse_config",
    "parse_config_with_warnings",
]


def _unknown(name: str, line: str) -> str:
    """ "unknown option", with the likely fix when the name is an option and a value with a
    ':' of its own (`Listen 127.0.0.1:10025`: the option's ':' is missing)."""
    words = name.split(None, 1)
    if len(words) == 2 and words[0].lower() in OPTIONS:
        option = OPTIONS[words[0].lower()][0]
        fixed = f"{option}: {line[len(words[0]) :].strip()}"
        return f"unknown option (a ':' missing after {option}? {fixed})"
    return "unknown option"


def parse_config_with_warnings(text: str, path: str = "<string>") -> tuple[Config, list[str]]:
    """Parse and validate config text; the warnings are for the log, not errors."""
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}  # field -> line of its (last) setting
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ConfigError(path, number, None, f"invalid config line (no ':'): {line!r}")
        name, value = name.strip(), value.strip()
        try:
            canonical, field, parser = OPTIONS[name.lower()]
        except KeyError:
            raise ConfigError(path, number, name, _unknown(name, line)) from None
        try:
            values[field] = parser(value)
            lines[field] = number
        except Invalid as exc:
            raise ConfigError(path, number, canonical, str(exc)) from None

    if values.get("workers") == AUTO:
        del values["workers"]  # the default: Config resolves it from MaxConnections
    config = Config(path=path, option_lines=lines, **values)
    if config.workers > config.max_connections:
        # Each worker gets a share of MaxConnections; a share of 0 would refuse everyone.
        raise ConfigError(
            path,
            lines.get("workers"),
            "Workers",
            f"{config.workers} workers but MaxConnections is {config.max_connections} "
            "(each worker needs at least one connection)",
        )
    config = attrs.evolve(config, tls_context=server_tls_context(config, lines))
    check_listen_tls(config, lines)
    warnings: list[str] = []
    config = attrs.evolve(config, out_tls_context=out_tls_context(config, lines, warnings))
    if config.transparent_proxy is TransparentMode.OFF:
        if config.out_address is None:
            raise ConfigError(
                path,
                None,
                "OutAddress",
                "no OutAddress specified (required unless TransparentProxy is on)",
            )
    elif config.out_address is not None:
        warnings.append("the OutAddress option will be ignored when TransparentProxy is enabled")
    if "proxy_protocol_from" in lines and not config.proxy_protocol:
        warnings.append("ProxyProtocolFrom is ignored while ProxyProtocol is off")
    warnings.extend(check_temp_directory(config, lines.get("temp_directory")))
    warnings.extend(check_filter_program(config, lines.get("filter_command")))
    warnings.extend(check_message_timeout(config, lines))
    warnings.extend(check_smtp_filter(config, lines.get("filter_command")))
    warnings.extend(check_scanners(config))
    per_client = config.max_connections_per_client
    if per_client and per_client >= config.max_connections:
        warnings.append(
            f"MaxConnectionsPerClient {per_client} is not below MaxConnections "
            f"{config.max_connections}: one client address can take every connection"
        )
    return config, warnings


def parse_config(text: str, path: str = "<string>") -> Config:
    """Parse and validate config text (see parse_config_with_warnings)."""
    return parse_config_with_warnings(text, path)[0]


def load_config_with_warnings(path: str) -> tuple[Config, list[str]]:
    """Read and parse a config file; a missing or unreadable file is a ConfigError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(path, None, None, f"couldn't open config file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, line, None, "not valid UTF-8") from None
    return parse_config_with_warnings(text, path)


def load_config(path: str) -> Config:
    """Read and parse a config file (see load_config_with_warnings)."""
    return load_config_with_warnings(path)[0]
