"""The relay's settings types: what the configuration decides for a connection, built by
`config/settings.py` (which may import this module, never the relay's I/O).  No Trio here:
`-t` loads only the configuration.

One frozen value per part of a connection, each taking only what it reads:
`UpstreamSettings` (`Upstream`), `TransactionSettings` (`Transaction`), `DeadlineSettings`
(the numbers `ClientDeadlines` is made of, with the clock, per connection), and the
`RelaySettings` bundle a `Connection` takes, whose `policy` is the session's policy without
the client (the relay completes it with the client's address, `RelaySettings.policy_for`).
"""

from __future__ import annotations

import enum
import ssl

import attrs

from trio_proxsmtp.common.address import Address
from trio_proxsmtp.common.networks import DEFAULT_TRUSTED_NETWORKS, IPNetwork, is_trusted
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.stages.settings import (
    FilterSpec,
    FilterType,
    MilterSettings,
    PolicySettings,
    ScannerSettings,
)

__all__ = [
    "DeadlineSettings",
    "OutProxyProtocol",
    "OutTLSMode",
    "RelaySettings",
    "TransactionSettings",
    "TransparentMode",
    "UpstreamSettings",
]


class OutTLSMode(enum.Enum):
    """`OutTLS`: how the proxy talks to the next server (as Postfix's smtp_tls_security_level).

    MAY: STARTTLS when the next server offers it, plain text when it does not.
    ENCRYPT: STARTTLS or no mail (4xx to the client).
    IMPLICIT: TLS from the first byte (RFC 8314), e.g. to port 465.
    """

    OFF = "off"
    MAY = "may"
    ENCRYPT = "encrypt"
    IMPLICIT = "implicit"


class OutProxyProtocol(enum.Enum):
    """`OutProxyProtocol`: a PROXY header (v1 text, v2 binary) before each next-hop
    connection's first byte, saying who the client is (docs/behaviour.md §11.13)."""

    OFF = "off"
    V1 = "v1"
    V2 = "v2"


class TransparentMode(enum.Enum):
    OFF = "off"
    CLIENT = "client"
    FULL = "full"


@attrs.frozen
class UpstreamSettings:
    """How to reach the next server and how long to wait for it (`Upstream`)."""

    address: Address | None  # OutAddress (None: TransparentProxy finds it per client)
    timeout: float = 180.0  # TimeOut: every connect, read and write
    reply_timeout: float = 180.0  # ReplyTimeOut: a whole reply, the banner included
    keep_alives: float = 0.0  # KeepAlives: NOOP after this many quiet seconds; 0: off
    tls: OutTLSMode = OutTLSMode.OFF  # OutTLS
    # Built by the config loader when OutTLS is not off (common/tls.py).
    tls_context: ssl.SSLContext | None = attrs.field(default=None, eq=False, repr=False)
    # The name checked in the certificate: OutTLSServerName, else OutAddress's host (None:
    # the address reached, per connection).
    tls_hostname: str | None = None
    transparent: TransparentMode = TransparentMode.OFF  # TransparentProxy
    proxy_protocol: OutProxyProtocol = OutProxyProtocol.OFF  # OutProxyProtocol (issue 23)


@attrs.frozen
class TransactionSettings:
    """What one message's spool, filter and replay need (`Transaction`)."""

    temp_directory: str = "/tmp/"  # TempDirectory
    filter: FilterSpec | None = None  # FilterCommand and its options; None: no filter
    filter_type: FilterType = FilterType.PIPE  # FilterType (FILE: the spool has a name)
    scanners: ScannerSettings | None = None  # Scanners (docs/behaviour.md §11.16)
    header: str | None = None  # Header: the template, None when unset
    message_timeout: float = 90.0  # MessageTimeOut: from the client's final dot to its reply


@attrs.frozen
class DeadlineSettings:
    """The client-side limits (relay/deadlines.py); the relay adds the clock."""

    timeout: float = 180.0  # TimeOut
    command_timeout: float = 180.0  # CommandTimeOut
    min_data_rate: int = 500  # MinDataRate, bytes/s; 0: off
    session_timeout: float = 3600.0  # SessionTimeOut; 0: none
    stress_timeout: float = 10.0  # StressTimeOut; 0: off


@attrs.frozen
class RelaySettings:
    """Everything a `Connection` takes from the configuration."""

    policy: SessionPolicy  # the session's policy, `client` left empty (see `policy_for`)
    upstream: UpstreamSettings
    transaction: TransactionSettings
    deadlines: DeadlineSettings
    # STARTTLS towards clients: the server context (TLSCertificate/TLSKey), None: not offered.
    tls_context: ssl.SSLContext | None = attrs.field(default=None, eq=False, repr=False)
    milters: MilterSettings | None = None  # None: no Milters configured
    policy_service: PolicySettings | None = None  # None: no PolicyService (issue 23)
    # ConnectionLimitExceptions: XFORWARD says SOURCE=LOCAL for these clients (issue 23).
    local_networks: tuple[IPNetwork, ...] = DEFAULT_TRUSTED_NETWORKS

    @property
    def timeout(self) -> float:
        """TimeOut: the client channel's reads and writes."""
        return self.deadlines.timeout

    def policy_for(
        self,
        client: str,
        is_ipv6: bool,
        *,
        peer: str | None = None,
        port: int | None = None,
        destination: str | None = None,
        destination_port: int | None = None,
    ) -> SessionPolicy:
        """The session's policy for this client: its address, its port and where it
        connected to (XCLIENT, XFORWARD); `peer`: the connecting address when a PROXY
        header named another client."""
        return attrs.evolve(
            self.policy,
            client=client,
            client_is_ipv6=is_ipv6,
            peer=peer,
            client_port=port,
            destination=destination,
            destination_port=destination_port,
            client_local=is_trusted(client, self.local_networks),
        )
