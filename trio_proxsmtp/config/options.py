"""The option table and its value parsers: each option's canonical name, its `Config`
field and the parser of its value.  A parser raises `Invalid` with the reason; the loader
adds the file, the line and the option (`FILE:LINE: OPTION: reason`).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from typing import Any, TypeVar

from trio_proxsmtp.common.address import Address, AddressKind, parse_address, resolve_tcp
from trio_proxsmtp.common.log_format import LogFormat
from trio_proxsmtp.common.networks import IPNetwork, parse_networks
from trio_proxsmtp.config.addresses import parse_milter_address
from trio_proxsmtp.config.model import (
    DEFAULT_FILTER_REJECT,
    DEFAULT_LISTEN_PORT,
    DEFAULT_LISTEN_TLS_PORT,
    DEFAULT_OUT_PORT,
    MAX_CONNECTIONS_LIMIT,
    MAX_WORKERS,
)
from trio_proxsmtp.config.options_policy import parse_policy_service
from trio_proxsmtp.config.options_scanners import (
    parse_scanner_list,
    parse_spamd_reject_score,
    parse_spamd_user,
)
from trio_proxsmtp.relay.settings import OutProxyProtocol, OutTLSMode, TransparentMode
from trio_proxsmtp.stages.settings import (
    DefaultAction,
    FilterType,
    MilterAddress,
    PolicyDefaultAction,
    ScannerAddress,
    ScannerDefaultAction,
)

__all__ = ["AUTO", "OPTIONS", "Invalid", "parse_milter_address", "parse_milter_list"]

# C `int`, like the reference's strtol into an int: keeps timeouts sane for Trio.
_INT_MAX = 2**31 - 1


def parse_milter_list(value: str) -> tuple[MilterAddress, ...]:
    """The ``Milters:`` value: comma (or space) separated addresses, in order."""
    items = [item for item in value.replace(",", " ").split() if item]
    return tuple(parse_milter_address(item) for item in items)


_TRUE_WORDS = frozenset({"1", "yes", "true", "t", "on"})
_FALSE_WORDS = frozenset({"0", "no", "false", "f", "off"})
_DECIMAL_RE = re.compile(r"[0-9]+")
_REPLY_CODE_RE = re.compile(r"([0-9]{3})(?:[ -]|$)")


_E = TypeVar("_E", bound=enum.Enum)


class Invalid(Exception):
    """A bad value; the caller adds file, line and option."""


def _integer(value: str, minimum: int, maximum: int = _INT_MAX) -> int:
    if not _DECIMAL_RE.fullmatch(value):
        raise Invalid(f"not a decimal integer: {value!r}")
    number = int(value)
    if not minimum <= number <= maximum:
        raise Invalid(f"must be between {minimum} and {maximum}: {value}")
    return number


def _seconds_positive(value: str) -> float:
    return float(_integer(value, 1))


def _seconds_or_zero(value: str) -> float:
    return float(_integer(value, 0))


def _boolean(value: str) -> bool:
    word = value.lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise Invalid(f"invalid value {value!r} (must be on/off, yes/no, true/false, 1/0)")


def _transparent(value: str) -> TransparentMode:
    word = value.lower()
    if word in ("client", "full"):
        return TransparentMode(word)
    return TransparentMode.CLIENT if _boolean(value) else TransparentMode.OFF


def _choice(kind: type[_E]) -> Callable[[str], _E]:
    """A parser for an option whose values are those of the enum `kind` (any case)."""
    words = [f"'{member.value}'" for member in kind]
    expected = f"{', '.join(words[:-1])} or {words[-1]}"

    def parse(value: str) -> _E:
        try:
            return kind(value.lower())
        except ValueError:
            raise Invalid(f"invalid value {value!r} (must be {expected})") from None

    return parse


def _address(default_port: int) -> Callable[[str], Address]:
    def parse(value: str) -> Address:
        try:
            address = parse_address(value, default_port)
        except ValueError as exc:
            raise Invalid(f"invalid socket name or ip: {value!r}: {exc}") from None
        if address.kind is AddressKind.TCP and address.host is not None:
            try:
                resolve_tcp(address)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise Invalid(f"couldn't resolve host name {address.host!r}: {reason}") from None
        return address

    return parse


def _proxy_networks(value: str) -> tuple[IPNetwork, ...]:
    try:
        return parse_networks(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _metrics_listen(value: str) -> Address:
    try:
        address = parse_address(value, 0)
    except ValueError as exc:
        raise Invalid(f"invalid address: {value!r}: {exc}") from None
    if address.kind is not AddressKind.TCP:
        raise Invalid(f"must be host:port (TCP), not a unix socket: {value!r}")
    if address.port == 0:
        raise Invalid(f"needs a port (host:port): {value!r}")
    return _address(0)(value)


def _filter_reject(value: str) -> str:
    if not value:
        return DEFAULT_FILTER_REJECT
    if not (value.isascii() and value.isprintable()):
        raise Invalid("must be printable ASCII (it is sent as an SMTP reply)")
    m = _REPLY_CODE_RE.match(value)
    if m and m.group(1)[0] not in "45":
        raise Invalid(f"reply code {m.group(1)} is not a rejection (must be 4xx or 5xx)")
    return value


AUTO = "auto"


def _workers(value: str) -> int | str:
    """A count, or "auto" (resolved once MaxConnections is known)."""
    if value.lower() == AUTO:
        return AUTO
    try:
        return _integer(value, 1, MAX_WORKERS)
    except Invalid as exc:
        raise Invalid(f"{exc} (or 'auto': one per CPU core)") from None


def _milters(value: str) -> tuple[MilterAddress, ...]:
    try:
        return parse_milter_list(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _policy_service(value: str) -> MilterAddress | None:
    try:
        return parse_policy_service(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def _invalid_on_error(parser: Callable[[str], Any]) -> Callable[[str], Any]:
    """A parser that raises ValueError, made to raise `Invalid` with its reason."""

    def parse(value: str) -> Any:
        try:
            return parser(value)
        except ValueError as exc:
            raise Invalid(str(exc)) from None

    return parse


def _scanners(value: str) -> tuple[ScannerAddress, ...]:
    return parse_scanner_list(value)


def _non_empty(value: str) -> str:
    if not value:
        raise Invalid("must not be empty")
    return value


def _server_name(value: str) -> str:
    if not value or not value.isascii() or any(c.isspace() for c in value) or "/" in value:
        raise Invalid(f"not a host name: {value!r}")
    return value


def _exception_networks(value: str) -> tuple[IPNetwork, ...]:
    """ConnectionLimitExceptions: comma-separated networks or addresses (``192.0.2.0/24,
    ::1``, Postfix's ``[2001:db8::]/32``; host bits allowed, as in Postfix's mynetworks), or
    ``none``. (ProxyProtocolFrom is stricter: proxy_protocol.parse_networks.)"""
    if value.lower() == "none":
        return ()
    networks = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            raise Invalid(f"empty network in {value!r} (use 'none' for no exceptions)")
        # "[2001:db8::]/32" as Postfix writes IPv6 networks, or "2001:db8::/32".
        bare = item[1:].replace("]", "", 1) if item.startswith("[") else item
        try:
            networks.append(ipaddress.ip_network(bare, strict=False))
        except ValueError as exc:
            raise Invalid(f"invalid network {item!r}: {exc}") from None
    return tuple(networks)


def _skip(value: str) -> bool:
    if value.lower() != "authenticated":
        raise Invalid(f"invalid value {value!r} (must be 'authenticated')")
    return True


# option name (lower case) -> (canonical name, Config field, value parser)
OPTIONS: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    name.lower(): (name, field, parser)
    for name, field, parser in [
        ("OutAddress", "out_address", _address(DEFAULT_OUT_PORT)),
        ("Listen", "listen", _address(DEFAULT_LISTEN_PORT)),
        ("FilterCommand", "filter_command", lambda v: v or None),
        ("FilterType", "filter_type", _choice(FilterType)),
        ("FilterTimeout", "filter_timeout", _seconds_positive),
        ("FilterReject", "filter_reject", _filter_reject),
        ("Header", "header", lambda v: v or None),
        ("KeepAlives", "keep_alives", _seconds_or_zero),
        ("MaxConnections", "max_connections", lambda v: _integer(v, 1, MAX_CONNECTIONS_LIMIT)),
        ("PidFile", "pid_file", lambda v: v),
        ("Skip", "skip_authenticated", _skip),
        ("TempDirectory", "temp_directory", _non_empty),
        ("TimeOut", "timeout", _seconds_positive),
        ("TransparentProxy", "transparent_proxy", _transparent),
        ("User", "user", _non_empty),
        ("XClient", "xclient", _boolean),
        ("ShutdownTimeout", "shutdown_timeout", _seconds_or_zero),
        ("Workers", "workers", _workers),
        ("MaxMessageSize", "max_message_size", lambda v: _integer(v, 0)),
        ("Pipelining", "pipelining", _boolean),
        ("TLSCertificate", "tls_certificate", _non_empty),
        ("TLSKey", "tls_key", _non_empty),
        ("ProxyProtocol", "proxy_protocol", _boolean),
        ("ProxyProtocolFrom", "proxy_protocol_from", _proxy_networks),
        ("MetricsListen", "metrics_listen", _metrics_listen),
        ("ListenTLS", "listen_tls", _address(DEFAULT_LISTEN_TLS_PORT)),
        ("Chunking", "chunking", _boolean),
        ("OutTLS", "out_tls", _choice(OutTLSMode)),
        ("OutTLSVerify", "out_tls_verify", _boolean),
        ("OutTLSCAFile", "out_tls_ca_file", _non_empty),
        ("OutTLSServerName", "out_tls_server_name", _server_name),
        ("OutTLSCertificate", "out_tls_certificate", _non_empty),
        ("OutTLSKey", "out_tls_key", _non_empty),
        ("Milters", "milters", _milters),
        ("MilterDefaultAction", "milter_default_action", _choice(DefaultAction)),
        ("MilterConnectTimeout", "milter_connect_timeout", _seconds_positive),
        ("MilterCommandTimeout", "milter_command_timeout", _seconds_positive),
        ("MilterContentTimeout", "milter_content_timeout", _seconds_positive),
        ("MaxRecipients", "max_recipients", lambda v: _integer(v, 1)),
        ("MaxConnectionsPerClient", "max_connections_per_client", lambda v: _integer(v, 0)),
        ("ConnectionLimitExceptions", "connection_limit_exceptions", _exception_networks),
        ("HardErrorLimit", "hard_error_limit", lambda v: _integer(v, 0)),
        ("CommandTimeOut", "command_timeout", _seconds_positive),
        ("ReplyTimeOut", "reply_timeout", _seconds_positive),
        ("MinDataRate", "min_data_rate", lambda v: _integer(v, 0)),
        ("SessionTimeOut", "session_timeout", _seconds_or_zero),
        ("StressTimeOut", "stress_timeout", _seconds_or_zero),
        ("MessageTimeOut", "message_timeout", _seconds_positive),
        # Policy services (issue 23): config/options_policy.py
        ("PolicyService", "policy_service", _policy_service),
        ("PolicyDefaultAction", "policy_default_action", _choice(PolicyDefaultAction)),
        ("PolicyTimeout", "policy_timeout", _seconds_positive),
        ("LogFormat", "log_format", _choice(LogFormat)),  # issue 24: text, json, logfmt
        # Client identity (issue 23)
        ("XForward", "xforward", _boolean),
        ("OutProxyProtocol", "out_proxy_protocol", _choice(OutProxyProtocol)),
        # The native scanners (docs/behaviour.md §11.16).
        ("Scanners", "scanners", _invalid_on_error(_scanners)),
        ("SpamdRejectScore", "spamd_reject_score", _invalid_on_error(parse_spamd_reject_score)),
        ("SpamdUser", "spamd_user", _invalid_on_error(parse_spamd_user)),
        ("SpamdMaxSize", "spamd_max_size", lambda v: _integer(v, 1)),
        ("ScannerDefaultAction", "scanner_default_action", _choice(ScannerDefaultAction)),
        ("ScannerConnectTimeout", "scanner_connect_timeout", _seconds_positive),
        ("ScannerTimeout", "scanner_timeout", _seconds_positive),
        # Draining behind a balancer (issue 24): accept on after SIGTERM, while not ready.
        ("DrainDelay", "drain_delay", _seconds_or_zero),
    ]
}
