"""Every layer's settings, built from a `Config` here and nowhere else: the relay's
(`relay_settings`: the session's policy, the upstream, the transaction, the client
deadlines) and the stages' (`filter_spec`, `milter_settings`).  No Trio, no I/O: only the
settings types of the layers (relay/settings.py, stages/settings.py).
"""

from __future__ import annotations

from trio_proxsmtp.config.model import Config
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.smtp.replies import reply_from_text
from trio_proxsmtp.relay.settings import (
    DeadlineSettings,
    OutTLSMode,
    RelaySettings,
    TransactionSettings,
    UpstreamSettings,
)
from trio_proxsmtp.stages.settings import (
    FilterSpec,
    FilterType,
    MilterSettings,
    PolicySettings,
    ScannerSettings,
)

__all__ = [
    "deadline_settings",
    "filter_name",
    "filter_spec",
    "milter_settings",
    "policy_settings",
    "relay_settings",
    "scanner_settings",
    "session_policy",
    "transaction_settings",
    "upstream_settings",
]


def relay_settings(config: Config) -> RelaySettings:
    """What a `Connection` takes from the configuration."""
    return RelaySettings(
        policy=session_policy(config),
        upstream=upstream_settings(config),
        transaction=transaction_settings(config),
        deadlines=deadline_settings(config),
        tls_context=config.tls_context,
        milters=milter_settings(config) if config.milters else None,
        policy_service=policy_settings(config),
        local_networks=config.connection_limit_exceptions,
    )


def session_policy(config: Config) -> SessionPolicy:
    """What the configuration decides for a session, the client left empty (the relay
    completes it with the client's address: `RelaySettings.policy_for`)."""
    reject = (
        reply_from_text(config.filter_reject) if config.filter_type is FilterType.REJECT else None
    )
    return SessionPolicy(
        client="",
        filtering=(bool(config.filter_command) or bool(config.scanners)) and reject is None,
        reject=reject,
        skip_authenticated=config.skip_authenticated,
        xclient=config.xclient,
        max_message_size=config.max_message_size or None,
        pipelining=config.pipelining,
        starttls=config.tls_context is not None,
        milters=bool(config.milters),
        filter_name=filter_name(config.filter_command or ""),
        upstream_starttls=config.out_tls in (OutTLSMode.MAY, OutTLSMode.ENCRYPT),
        upstream_tls_required=config.out_tls is OutTLSMode.ENCRYPT,
        chunking=config.chunking,
        max_recipients=config.max_recipients,
        hard_error_limit=config.hard_error_limit,
        policy_service=config.policy_service is not None,
        xforward=config.xforward,
        verified_tls_hop=config.out_tls in (OutTLSMode.ENCRYPT, OutTLSMode.IMPLICIT)
        and config.upstream_tls_verify,
    )


def filter_name(command: str) -> str:
    """FilterCommand's program, as the summary names it (filter=...)."""
    words = command.split()
    return words[0].rsplit("/", 1)[-1].replace(",", "") if words else "filter"


def upstream_settings(config: Config) -> UpstreamSettings:
    return UpstreamSettings(
        address=config.out_address,
        timeout=config.timeout,
        reply_timeout=config.reply_timeout,
        keep_alives=config.keep_alives,
        tls=config.out_tls,
        tls_context=config.out_tls_context,
        tls_hostname=config.upstream_tls_hostname,
        transparent=config.transparent_proxy,
        proxy_protocol=config.out_proxy_protocol,
    )


def transaction_settings(config: Config) -> TransactionSettings:
    return TransactionSettings(
        temp_directory=config.temp_directory,
        filter=filter_spec(config),
        filter_type=config.filter_type,
        scanners=scanner_settings(config) if config.scanners else None,
        header=config.header,
        message_timeout=config.message_timeout,
    )


def filter_spec(config: Config) -> FilterSpec | None:
    """The FilterCommand to run on each message (stages/filter/), None without one."""
    if not config.filter_command:
        return None
    return FilterSpec(
        command=config.filter_command,
        mode=config.filter_type,
        timeout=config.filter_timeout,
        temp_directory=config.temp_directory,
    )


def scanner_settings(config: Config) -> ScannerSettings:
    """The native scanners' settings (stages/scanners/, docs/behaviour.md §11.16)."""
    return ScannerSettings(
        scanners=config.scanners,
        spamd_reject_score=config.spamd_reject_score,
        spamd_user=config.spamd_user,
        spamd_max_size=config.spamd_max_size,
        default_action=config.scanner_default_action,
        connect_timeout=config.scanner_connect_timeout,
        timeout=config.scanner_timeout,
    )


def deadline_settings(config: Config) -> DeadlineSettings:
    """The client-side limits (relay/deadlines.py)."""
    return DeadlineSettings(
        timeout=config.timeout,
        command_timeout=config.command_timeout,
        min_data_rate=config.min_data_rate,
        session_timeout=config.session_timeout,
        stress_timeout=config.stress_timeout,
    )


def milter_settings(config: Config) -> MilterSettings:
    """The milter client's settings (stages/settings.py) from the configuration."""
    return MilterSettings(
        milters=config.milters,
        default_action=config.milter_default_action,
        connect_timeout=config.milter_connect_timeout,
        command_timeout=config.milter_command_timeout,
        content_timeout=config.milter_content_timeout,
    )


def policy_settings(config: Config) -> PolicySettings | None:
    """PolicyService's settings (stages/settings.py), None without one (issue 23)."""
    if config.policy_service is None:
        return None
    return PolicySettings(
        address=config.policy_service,
        default_action=config.policy_default_action,
        timeout=config.policy_timeout,
    )
