"""The configuration's model: one frozen `Config` with proxsmtpd's defaults, the limits
and defaults the options share, and `ConfigError` (FILE:LINE: OPTION: MESSAGE).

`Config.pid_file` is None when the file does not set PidFile, and "" when it sets it empty
(which disables the pid file even if -p was given, as in the reference).  `Workers: auto`,
the default, is resolved when a `Config` is made (`auto_workers`), so `Config.workers` is
always a count; an unset CommandTimeOut is resolved the same way, to the config's TimeOut.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping

import attrs

from trio_proxsmtp.common.address import Address, AddressKind, parse_address
from trio_proxsmtp.common.log_format import LogFormat
from trio_proxsmtp.common.networks import DEFAULT_TRUSTED_NETWORKS, IPNetwork
from trio_proxsmtp.relay.settings import OutProxyProtocol, OutTLSMode, TransparentMode
from trio_proxsmtp.stages.settings import (
    DefaultAction,
    FilterType,
    MilterAddress,
    PolicyDefaultAction,
    ScannerAddress,
    ScannerDefaultAction,
)

__all__ = [
    "DEFAULT_CONNECTION_LIMIT_EXCEPTIONS",
    "DEFAULT_FILTER_REJECT",
    "DEFAULT_LISTEN",
    "DEFAULT_LISTEN_PORT",
    "DEFAULT_LISTEN_TLS_PORT",
    "DEFAULT_OUT_PORT",
    "MAX_CONNECTIONS_LIMIT",
    "MAX_WORKERS",
    "STRESS_FRACTION",
    "Config",
    "ConfigError",
    "auto_workers",
]

DEFAULT_LISTEN_PORT = 10025
DEFAULT_LISTEN_TLS_PORT = 465  # submissions (RFC 8314)
DEFAULT_OUT_PORT = 25
DEFAULT_FILTER_REJECT = "530 Email Rejected"
MAX_CONNECTIONS_LIMIT = 10239
MAX_WORKERS = 64
DEFAULT_LISTEN = parse_address(str(DEFAULT_LISTEN_PORT), DEFAULT_LISTEN_PORT)

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
    # Extension: worker processes sharing the listener (daemon/workers.py); the default is
    # `Workers: auto`, resolved once per load from this config's MaxConnections.
    workers: int = attrs.field(
        default=attrs.Factory(lambda self: auto_workers(self.max_connections), takes_self=True)
    )
    max_message_size: int = 0  # extension: bytes, 0 = only the upstream's SIZE limits it
    pipelining: bool = False  # extension: advertise PIPELINING (RFC 2920) to clients
    tls_certificate: str | None = None  # extension: offer STARTTLS with this PEM certificate
    tls_key: str | None = None  # extension: ... and this key (common/tls.py)
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
    # Built from the OutTLS* options by the parser when OutTLS is not off (common/tls.py).
    out_tls_context: ssl.SSLContext | None = attrs.field(default=None, eq=False, repr=False)
    # extension: milters (stages/milter/), applied in this order, and what a failing one means
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
    # A whole client command line, from ready to its LF.  By default TimeOut, so that this
    # record's deadline is never looser than a read's; an explicit value wins
    # (docs/behaviour.md §8.1).
    command_timeout: float = attrs.field(
        default=attrs.Factory(lambda self: self.timeout, takes_self=True)
    )
    reply_timeout: float = 180.0  # a whole upstream reply (banner included)
    min_data_rate: int = 500  # bytes/s a client must keep up in DATA/BDAT; 0: off
    session_timeout: float = 3600.0  # a whole session; 0: none
    stress_timeout: float = 10.0  # client waits under stress (see STRESS_FRACTION); 0: off
    # From the client's final dot to its reply (filter, milters, replay): below Postfix's
    # smtpd_proxy_timeout of 100 s, so the proxy answers 451 before Postfix gives up
    # (docs/behaviour.md §8.1).
    message_timeout: float = 90.0
    # Policy services (issue 23; stages/policy.py): Postfix's policy delegation at RCPT.
    policy_service: MilterAddress | None = None
    policy_default_action: PolicyDefaultAction = PolicyDefaultAction.TEMPFAIL
    policy_timeout: float = 100.0  # Postfix's smtpd_policy_service_timeout

    # Logs, health and metrics (issue 24): how each log record reads (common/log_format.py).
    log_format: LogFormat = LogFormat.TEXT

    # Client identity (issue 23): XFORWARD towards the next server, a PROXY header before
    # each next-hop connection (docs/behaviour.md §11.12, §11.13).
    xforward: bool = False
    out_proxy_protocol: OutProxyProtocol = OutProxyProtocol.OFF

    # The native scanners (docs/behaviour.md §11.16).
    scanners: tuple[ScannerAddress, ...] = ()
    spamd_reject_score: float | None = None
    spamd_user: str | None = None
    spamd_max_size: int = 512000
    scanner_default_action: ScannerDefaultAction = ScannerDefaultAction.TEMPFAIL
    scanner_connect_timeout: float = 10.0
    scanner_timeout: float = 60.0

    # Draining behind a balancer (issue 24; daemon/draining.py): seconds of accepting on
    # after SIGTERM, while /readyz says draining; 0 = stop accepting at once (1.10's way).
    drain_delay: float = 0.0
    path: str = "/etc/proxsmtpd.conf"  # the file this came from
    # Field -> the line of its (last) setting in that file, for errors found after parsing
    # (a User that does not exist): filled by the loader.
    option_lines: Mapping[str, int] = attrs.field(factory=dict, eq=False, repr=False)

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
