"""What of a reloaded config (SIGHUP) a running server can apply, with no I/O.

Running sessions finish on the config they started with; new connections get the new one.
Listen, ListenTLS, Workers, MetricsListen and LogFormat need a restart: a change is logged and the
running value kept.  A config that cannot run at all (ListenTLS without its certificate,
fewer MaxConnections than workers) is not applied.  Used by every worker (Server.reload)
and by the supervisor (for the workers it starts from then on).
"""

from __future__ import annotations

import attrs

from trio_proxsmtp.config.model import Config

__all__ = ["applicable_reload"]


def applicable_reload(
    running: Config, new: Config, workers: int
) -> tuple[Config | None, list[str]]:
    """What of a reloaded config a running server can apply: Listen and Workers need a
    restart, so they keep their running values. None when it cannot be applied at all.
    The reasons come back as text for the log. Used by every worker and the supervisor."""
    problems: list[str] = []
    if new.listen != running.listen:
        problems.append(
            f"Listen changed from {running.listen} to {new.listen}: a restart is needed to apply it"
        )
        new = attrs.evolve(new, listen=running.listen)
    if new.listen_tls != running.listen_tls:
        problems.append(
            f"ListenTLS changed from {running.listen_tls} to {new.listen_tls}: "
            "a restart is needed to apply it"
        )
        new = attrs.evolve(new, listen_tls=running.listen_tls)
    if running.listen_tls is not None and new.tls_context is None:
        problems.append("ListenTLS needs TLSCertificate and TLSKey")
        return None, problems
    if new.workers != workers:
        problems.append(
            f"Workers changed from {workers} to {new.workers}: a restart is needed to apply it"
        )
        new = attrs.evolve(new, workers=workers)
    if new.metrics_listen != running.metrics_listen:
        problems.append(
            f"MetricsListen changed from {running.metrics_listen or 'unset'} to "
            f"{new.metrics_listen or 'unset'}: a restart is needed to apply it"
        )
        new = attrs.evolve(new, metrics_listen=running.metrics_listen)
    if new.log_format is not running.log_format:
        problems.append(
            f"LogFormat changed from {running.log_format.value} to {new.log_format.value}: "
            "a restart is needed to apply it"
        )
        new = attrs.evolve(new, log_format=running.log_format)
    if new.max_connections < workers:
        problems.append(
            f"MaxConnections {new.max_connections} is less than the {workers} workers running"
        )
        return None, problems
    return new, problems
