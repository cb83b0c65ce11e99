"""proxsmtpd.conf parsing: one frozen Config; nothing else in the program reads the file.

Syntax and options follow proxsmtpd 1.10 (docs/behaviour.md §2): `Name: value` per line, the first
":" separates, names are case-insensitive, `#` only at the start of a line, the last
duplicate wins. Where the reference is wrong we choose (and `proxsmtpd.conf.example` says so):
an empty `FilterCommand:` means no filter (B22), `MaxConnections` accepts 1..10239 (B23),
an empty `FilterReject:` means the default, a missing config file is an error rather than a
warning, and an unresolvable host name is an error. Every error is a ConfigError naming the
file, the line and the option. Warnings that should not stop the daemon are returned by the
`*_with_warnings` functions, never printed here.

Extensions: `ShutdownTimeout` and `Workers` (1..64 processes sharing the listener; it may
not exceed MaxConnections, which is shared out between the workers); `ProxyProtocol` and
`ProxyProtocolFrom` (a load balancer's PROXY header, proxy_protocol.py);
`MetricsListen` (Prometheus metrics over HTTP, metrics.py); TLS towards clients
(`TLSCertificate`/`TLSKey`, `ListenTLS`) and towards the next server (`OutTLS*`), whose
contexts are built here once per load so that `-t` and SIGHUP catch unusable files;
`Chunking`; and the milter options `Milters` (comma-separated ``inet:host:port`` /
``unix:/path``), `MilterDefaultAction` (tempfail, accept or reject) and
`MilterConnectTimeout` / `MilterCommandTimeout` / `MilterContentTimeout` (seconds); and the
limits that bound what a hostile client can hold (MaxRecipients, MaxConnectionsPerClient with
ConnectionLimitExceptions, HardErrorLimit, CommandTimeOut, ReplyTimeOut, MinDataRate,
SessionTimeOut, StressTimeOut).
`Workers: auto`, the default, is resolved here, at load, to one worker per core this process
may run on (capped by MAX_WORKERS and MaxConnections), so `Config.workers` is always a count.

`Config.pid_file` is None when the file does not set PidFile, and "" when it sets it empty
(which disables the pid file even if -p was given, as in the reference).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import shutil
import ssl
import stat
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from trio_proxsmtp.common.address import Address, AddressKind, parse_address, resolve_tcp
from trio_proxsmtp.common.networks import DEFAULT_TRUSTED_NETWORKS, IPNetwork, parse_networks
from trio_proxsmtp.common.tls import TLSError, server_context, system_ca_available, upstream_context
from trio_proxsmtp.relay.settings import OutTLSMode, TransparentMode
from trio_proxsmtp.stages.settings import (
    DefaultAction,
    FilterType,
    MilterAddress,
    MilterSettings,
    direct_argv,
)

DEFAULT_LISTEN_PORT = 10025
DEFAULT_LISTEN_TLS_PORT = 465  # submissions (RFC 8314)
DEFAULT_OUT_PORT = 25
DEFAULT_FILTER_REJECT = "530 Email Rejected"
MAX_CONNECTIONS_LIMIT = 10239
MAX_WORKERS = 64
DEFAULT_LISTEN = parse_address(str(DEFAULT_LISTEN_PORT), DEFAULT_LISTEN_PORT)
# C `int`, like the reference's strtol into an int: keeps timeouts sane for Trio.
_INT_MAX = 2**31 - 1


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
            raise ValueError(f"{text!r}: a port is required (inet:host:port)")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets")
    if not host:
        raise ValueError(f"{text!r}: a host is required")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: invalid port {port_text!r}")
    return MilterAddress(text, host=host, port=int(port_text))


def parse_milter_list(value: str) -> tuple[MilterAddress, ...]:
    """The ``Milters:`` value: comma (or space) separated addresses, in order."""
    items = [item for item in value.replace(",", " ").split() if item]
    return tuple(parse_milter_address(item) for item in items)


DEFAULT_CONNECTION_LIMIT_EXCEPTIONS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
# Stress: from this share of MaxConnections on, StressTimeOut replaces the longer waits.
STRESS_FRACTION = 0.75


@attrs.frozen
class Config:
    """Every option of proxsmtpd 1.10 plus our extensions, with proxsmtpd's defaults."""

    out_address: Address | None = None
    listen: Address = DEFAULT_LISTEN  # port-only 10025: all IPv4 interfaces
    filter_command: str | None = None  # empty value in the file means None
    filter_type: FilterType = FilterType.PIPE
    filter_timeout: float = 30.0
    filter_reject: str = DEFAULT_FILTER_REJECT  # raw text; normalised by the protocol layer
    header: str | None = None  # raw template, None when unset or empty
    keep_alives: float = 0.0  # 0 = off
    max_connections: int = 64
    pid_file: str | None = None  # None: not set; "": set empty (no pid file at all)
    skip_authenticated: bool = False
    temp_directory: str = "/tmp/"
    timeout: float = 180.0
    transparent_proxy: TransparentMode = TransparentMode.OFF
    user: str | None = None
    xclient: bool = False
    shutdown_timeout: float = 30.0  # extension: graceful drain on SIGTERM
    # Extension: worker processes sharing the listener (cli.py, workers.py); the default is
    # `Workers: auto`, resolved once per load from this config's MaxConnections.
    workers: int = attrs.field(
        default=attrs.Factory(lambda self: auto_workers(self.max_connections), takes_self=True)
    )
    max_message_size: int = 0  # extension: bytes, 0 = only the upstream's SIZE limits it
    pipelining: bool = False  # extension: advertise PIPELINING (RFC 2920) to clients
    tls_certificate: str | None = None  # extension: offer STARTTLS with this PEM certificate
    tls_key: str | None = None  # extension: ... and this key (tls.py)
    proxy_protocol: bool = False  # extension: every connection starts with a PROXY header
    proxy_protocol_from: tuple[IPNetwork, ...] = DEFAULT_TRUSTED_NETWORKS  # ... only from these
    metrics_listen: Address | None = None  # extension: serve /metrics here (TCP), None = off
    # Built from the two by the parser, once per load (at start, and in SIGHUP's thread).
    tls_context: ssl.SSLContext | None = attrs.field(default=None, eq=False, repr=False)
    listen_tls: Address | None = None  # extension: a second listener, TLS from the first byte
    chunking: bool = False  # extension: advertise CHUNKING (RFC 3030) and take BDAT
    out_tls: OutTLSMode = OutTLSMode.OFF  # extension: TLS to the next server
    out_tls_verify: bool | None = None  # None: the mode's default (see upstream_tls_verify)
    out_tls_ca_file: str | None = None  # None: the system CA store
    out_tls_server_name: str | None = None  # None: the OutAddress host
    out_tls_certificate: str | None = None  # a client certificate for the next server...
    out_tls_key: str | None = None  # ... and its key
    # Built from the OutTLS* options by the parser when OutTLS is not off (tls.py).
    out_tls_context: ssl.SSLContext | None = attrs.field(default=None, eq=False, repr=False)
    # extension: milters (milter.py), applied in this order, and what a failing one means
    milters: tuple[MilterAddress, ...] = ()
    milter_default_action: DefaultAction = DefaultAction.TEMPFAIL
    milter_connect_timeout: float = 30.0
    milter_command_timeout: float = 30.0
    milter_content_timeout: float = 300.0
    # Extensions bounding hostile peers (issue 16); used by the relay and the server.
    max_recipients: int = 1000  # over it: 452 4.5.3 Too many recipients
    max_connections_per_client: int | None = None  # None: half of MaxConnections; 0: none
    connection_limit_exceptions: tuple[IPNetwork, ...] = DEFAULT_CONNECTION_LIMIT_EXCEPTIONS
    hard_error_limit: int = 20  # error replies before the client is disconnected; 0: none
    command_timeout: float = 180.0  # a whole client command line, from ready to its LF
    reply_timeout: float = 180.0  # a whole upstream reply (banner included)
    min_data_rate: int = 500  # bytes/s a client must keep up in DATA/BDAT; 0: off
    session_timeout: float = 3600.0  # a whole session; 0: none
    stress_timeout: float = 10.0  # client waits under stress (see STRESS_FRACTION); 0: off
    path: str = "/etc/proxsmtpd.conf"  # the file this came from

    @property
    def upstream_tls_verify(self) -> bool:
        """Whether the next server's certificate is verified.

        `OutTLSVerify` when set; else on for `encrypt` and `implicit`, off for `may` (as
        Postfix's `may`: opportunistic TLS, encrypted but not authenticated).
        """
        if self.out_tls_verify is not None:
            return self.out_tls_verify
        return self.out_tls in (OutTLSMode.ENCRYPT, OutTLSMode.IMPLICIT)

    @property
    def upstream_tls_hostname(self) -> str | None:
        """The name to pass as `server_hostname` for the next server: `OutTLSServerName`,
        else the OutAddress host (a name, or an IP address: checked against the
        certificate's IP entries, never sent as SNI). None when neither gives one (a Unix
        socket; the client's own or original address, which the relay knows per connection).
        """
        if self.out_tls_server_name is not None:
            return self.out_tls_server_name
        address = self.out_address
        if address is None or address.kind is not AddressKind.TCP or address.is_port_only:
            return None
        return address.host

    @property
    def per_client_limit(self) -> int:
        """Connections one client address may hold (0: no limit)."""
        if self.max_connections_per_client is None:
            return max(1, self.max_connections // 2)
        return self.max_connections_per_client

    def connection_limit_applies(self, client_ip: str) -> bool:
        """Does MaxConnectionsPerClient count this client? Not for ConnectionLimitExceptions,
        and not for a client without an IP address (a unix socket)."""
        try:
            address = ipaddress.ip_address(client_ip.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return not any(address in network for network in self.connection_limit_exceptions)


def auto_workers(max_connections: int) -> int:
    """`Workers: auto`: one worker per core we may run on, at most MAX_WORKERS and at most
    MaxConnections (each worker needs a share of at least one connection)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: every core the machine has
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS, max_connections))


class ConfigError(Exception):
    """A config problem, printed by the command line as one line: FILE:LINE: OPTION: MESSAGE."""

    def __init__(self, path: str, line: int | None, option: str | None, message: str) -> None:
        super().__init__(path, line, option, message)
        self.path = path
        self.line = line
        self.option = option
        self.message = message

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        parts = [where] + ([self.option] if self.option is not None else []) + [self.message]
        return ": ".join(parts)


_TRUE_WORDS = frozenset({"1", "yes", "true", "t", "on"})
_FALSE_WORDS = frozenset({"0", "no", "false", "f", "off"})
_DECIMAL_RE = re.compile(r"[0-9]+")
_REPLY_CODE_RE = re.compile(r"([0-9]{3})(?:[ -]|$)")


_E = TypeVar("_E", bound=enum.Enum)


class _Invalid(Exception):
    """A bad value; the caller adds file, line and option."""


def _integer(value: str, minimum: int, maximum: int = _INT_MAX) -> int:
    if not _DECIMAL_RE.fullmatch(value):
        raise _Invalid(f"not a decimal integer: {value!r}")
    number = int(value)
    if not minimum <= number <= maximum:
        raise _Invalid(f"must be between {minimum} and {maximum}: {value}")
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
    raise _Invalid(f"invalid value {value!r} (must be on/off, yes/no, true/false, 1/0)")


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
            raise _Invalid(f"invalid value {value!r} (must be {expected})") from None

    return parse


def _address(default_port: int) -> Callable[[str], Address]:
    def parse(value: str) -> Address:
        try:
            address = parse_address(value, default_port)
        except ValueError as exc:
            raise _Invalid(f"invalid socket name or ip: {value!r}: {exc}") from None
        if address.kind is AddressKind.TCP and address.host is not None:
            try:
                resolve_tcp(address)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise _Invalid(f"couldn't resolve host name {address.host!r}: {reason}") from None
        return address

    return parse


def _proxy_networks(value: str) -> tuple[IPNetwork, ...]:
    try:
        return parse_networks(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _metrics_listen(value: str) -> Address:
    try:
        address = parse_address(value, 0)
    except ValueError as exc:
        raise _Invalid(f"invalid address: {value!r}: {exc}") from None
    if address.kind is not AddressKind.TCP:
        raise _Invalid(f"must be host:port (TCP), not a unix socket: {value!r}")
    if address.port == 0:
        raise _Invalid(f"needs a port (host:port): {value!r}")
    return _address(0)(value)


def _filter_reject(value: str) -> str:
    if not value:
        return DEFAULT_FILTER_REJECT
    if not (value.isascii() and value.isprintable()):
        raise _Invalid("must be printable ASCII (it is sent as an SMTP reply)")
    m = _REPLY_CODE_RE.match(value)
    if m and m.group(1)[0] not in "45":
        raise _Invalid(f"reply code {m.group(1)} is not a rejection (must be 4xx or 5xx)")
    return value


_AUTO = "auto"


def _workers(value: str) -> int | str:
    """A count, or "auto" (resolved once MaxConnections is known)."""
    if value.lower() == _AUTO:
        return _AUTO
    try:
        return _integer(value, 1, MAX_WORKERS)
    except _Invalid as exc:
        raise _Invalid(f"{exc} (or 'auto': one per CPU core)") from None


def _milters(value: str) -> tuple[MilterAddress, ...]:
    try:
        return parse_milter_list(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _non_empty(value: str) -> str:
    if not value:
        raise _Invalid("must not be empty")
    return value


def _server_name(value: str) -> str:
    if not value or not value.isascii() or any(c.isspace() for c in value) or "/" in value:
        raise _Invalid(f"not a host name: {value!r}")
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
            raise _Invalid(f"empty network in {value!r} (use 'none' for no exceptions)")
        # "[2001:db8::]/32" as Postfix writes IPv6 networks, or "2001:db8::/32".
        bare = item[1:].replace("]", "", 1) if item.startswith("[") else item
        try:
            networks.append(ipaddress.ip_network(bare, strict=False))
        except ValueError as exc:
            raise _Invalid(f"invalid network {item!r}: {exc}") from None
    return tuple(networks)


def _skip(value: str) -> bool:
    if value.lower() != "authenticated":
        raise _Invalid(f"invalid value {value!r} (must be 'authenticated')")
    return True


# option name (lower case) -> (canonical name, Config field, value parser)
_OPTIONS: dict[str, tuple[str, str, Callable[[str], Any]]] = {
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
    ]
}


def _temp_directory_warnings(directory: str) -> list[str]:
    try:
        st = os.stat(directory)
    except OSError as exc:
        return [f"TempDirectory {directory!r} is not usable: {exc.strerror}"]
    if not stat.S_ISDIR(st.st_mode):
        return [f"TempDirectory {directory!r} is not a directory"]
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        return [
            f"TempDirectory {directory!r} is world-writable without the sticky bit: "
            "use a directory private to the proxy's user"
        ]
    return []


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
            canonical, field, parser = _OPTIONS[name.lower()]
        except KeyError:
            raise ConfigError(path, number, name, "unknown option") from None
        try:
            values[field] = parser(value)
            lines[field] = number
        except _Invalid as exc:
            raise ConfigError(path, number, canonical, str(exc)) from None

    if values.get("workers") == _AUTO:
        del values["workers"]  # the default: Config resolves it from MaxConnections
    config = Config(path=path, **values)
    if config.workers > config.max_connections:
        # Each worker gets a share of MaxConnections; a share of 0 would refuse everyone.
        raise ConfigError(
            path,
            lines.get("workers"),
            "Workers",
            f"{config.workers} workers but MaxConnections is {config.max_connections} "
            "(each worker needs at least one connection)",
        )
    config = attrs.evolve(config, tls_context=_tls_context(config, lines))
    _check_listen_tls(config, lines)
    warnings: list[str] = []
    config = attrs.evolve(config, out_tls_context=_out_tls_context(config, lines, warnings))
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
    warnings.extend(_temp_directory_warnings(config.temp_directory))
    warnings.extend(check_filter_program(config, lines.get("filter_command")))
    per_client = config.max_connections_per_client
    if per_client and per_client >= config.max_connections:
        warnings.append(
            f"MaxConnectionsPerClient {per_client} is not below MaxConnections "
            f"{config.max_connections}: one client address can take every connection"
        )
    if per_client and per_client < config.workers:
        # Each worker applies its share of the limit, and a share is at least one.
        warnings.append(
            f"MaxConnectionsPerClient {per_client} is less than Workers {config.workers}: "
            f"each worker allows one connection per client address, so an address may "
            f"hold {config.workers}"
        )
    return config, warnings


def check_filter_program(config: Config, line: int | None = None) -> list[str]:
    """Check that the FilterCommand's program exists and can be executed.

    A missing filter would otherwise refuse every message with the shell's "not found"
    (and show its path to outside senders), so it stops the daemon at start, at -t and on
    a reload. A command with shell syntax (or a shell builtin) runs under ``/bin/sh -c``:
    its program is not checked, and that is a warning. Raises ConfigError naming the file,
    the line and the reason; returns the warnings.
    """
    command = config.filter_command
    if command is None or config.filter_type is FilterType.REJECT:
        return []
    # filter.py imports this module; only the function is needed, at call time.

    argv = direct_argv(command)
    if argv is None:
        return [
            f"FilterCommand {command!r} runs under /bin/sh -c (shell syntax or a builtin): "
            "its program could not be checked"
        ]
    program = argv[0]
    if "/" in program:
        try:
            st = os.stat(program)
        except OSError as exc:
            reason = f"{program}: {exc.strerror}"
        else:
            if not stat.S_ISREG(st.st_mode):
                reason = f"{program}: not a regular file"
            elif not os.access(program, os.X_OK):
                reason = f"{program}: not executable"
            else:
                return []
    elif shutil.which(program) is not None:
        return []
    else:
        reason = f"{program}: no executable of that name in PATH ({os.environ.get('PATH', '')})"
    raise ConfigError(config.path, line, "FilterCommand", reason)


def _tls_context(config: Config, lines: dict[str, int]) -> ssl.SSLContext | None:
    """Both TLS options or neither, and a certificate that loads (so -t catches it)."""
    if config.tls_certificate is None and config.tls_key is None:
        return None
    if config.tls_certificate is None or config.tls_key is None:
        if config.tls_key is None:
            missing, given = "TLSKey", "tls_certificate"
        else:
            missing, given = "TLSCertificate", "tls_key"
        raise ConfigError(
            config.path, lines.get(given), missing, "required with the other TLS option"
        )
    try:
        return server_context(config.tls_certificate, config.tls_key)
    except TLSError as exc:
        raise ConfigError(
            config.path, lines.get("tls_certificate"), "TLSCertificate", str(exc)
        ) from None


def _check_listen_tls(config: Config, lines: dict[str, int]) -> None:
    """ListenTLS needs the server certificate, and an address of its own."""
    listen_tls = config.listen_tls
    if listen_tls is None:
        return
    line = lines.get("listen_tls")
    if config.tls_context is None:
        raise ConfigError(config.path, line, "ListenTLS", "needs TLSCertificate and TLSKey")
    listen = config.listen
    if listen.kind is listen_tls.kind and (
        (listen.kind is AddressKind.UNIX and listen.path == listen_tls.path)
        or (
            listen.kind is AddressKind.TCP
            and listen.port == listen_tls.port
            and (listen.is_port_only or listen_tls.is_port_only or listen.host == listen_tls.host)
        )
    ):
        raise ConfigError(
            config.path, line, "ListenTLS", f"the same address as Listen ({listen.text})"
        )


_OUT_TLS_DETAILS = {
    "out_tls_verify": "OutTLSVerify",
    "out_tls_ca_file": "OutTLSCAFile",
    "out_tls_server_name": "OutTLSServerName",
    "out_tls_certificate": "OutTLSCertificate",
    "out_tls_key": "OutTLSKey",
}


def _out_tls_context(
    config: Config, lines: dict[str, int], warnings: list[str]
) -> ssl.SSLContext | None:
    """The context for TLS to the next server, or None with OutTLS off (so -t checks it)."""
    path = config.path
    if (config.out_tls_certificate is None) != (config.out_tls_key is None):
        if config.out_tls_key is None:
            missing, given = "OutTLSKey", "out_tls_certificate"
        else:
            missing, given = "OutTLSCertificate", "out_tls_key"
        raise ConfigError(path, lines.get(given), missing, "required with the other of the two")
    if config.out_tls is OutTLSMode.OFF:
        ignored = [name for field, name in _OUT_TLS_DETAILS.items() if field in lines]
        if ignored:
            warnings.append(f"{', '.join(ignored)} ignored: OutTLS is off")
        return None
    verify = config.upstream_tls_verify
    # The option that made verification on: where an error about it points.
    verify_option = "OutTLSVerify" if "out_tls_verify" in lines else "OutTLS"
    verify_line = lines.get("out_tls_verify", lines.get("out_tls"))
    if not verify and config.out_tls_ca_file is not None:
        warnings.append("OutTLSCAFile ignored: OutTLSVerify is off")
    if verify:
        address = config.out_address
        if (
            config.out_tls_server_name is None
            and address is not None
            and address.kind is AddressKind.UNIX
            and config.transparent_proxy is TransparentMode.OFF
        ):
            raise ConfigError(
                path,
                verify_line,
                verify_option,
                "verifying the next server needs OutTLSServerName: OutAddress is a Unix socket",
            )
        if config.out_tls_ca_file is None and not system_ca_available():
            raise ConfigError(
                path,
                verify_line,
                verify_option,
                "verifying the next server needs CA certificates: there is no system CA "
                "store, set OutTLSCAFile (or OutTLSVerify: off)",
            )
    if verify and config.out_tls_ca_file is not None:  # its errors name OutTLSCAFile
        try:
            upstream_context(verify=True, ca_file=config.out_tls_ca_file)
        except TLSError as exc:
            line = lines.get("out_tls_ca_file")
            raise ConfigError(path, line, "OutTLSCAFile", str(exc)) from None
    try:
        return upstream_context(
            verify=verify,
            ca_file=config.out_tls_ca_file if verify else None,
            certificate=config.out_tls_certificate,
            key=config.out_tls_key,
        )
    except TLSError as exc:
        raise ConfigError(
            path, lines.get("out_tls_certificate"), "OutTLSCertificate", str(exc)
        ) from None


def milter_settings(config: Config) -> MilterSettings:
    """The milter client's settings (stages/settings.py) from the configuration."""
    return MilterSettings(
        milters=config.milters,
        default_action=config.milter_default_action,
        connect_timeout=config.milter_connect_timeout,
        command_timeout=config.milter_command_timeout,
        content_timeout=config.milter_content_timeout,
    )


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
