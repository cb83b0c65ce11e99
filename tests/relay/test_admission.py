"""admission.py: the decision to admit a new connection, with no I/O (no server, no socket)."""

from __future__ import annotations

import pytest

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.model import STRESS_FRACTION
from trio_proxsmtp.daemon.admission import (
    Admission,
    Limits,
    LocalCounts,
    Refusal,
    counted_client,
    stress_change,
    worker_client_share,
    worker_share,
)


def test_busy_from_this_workers_share_of_max_connections() -> None:
    limits = Limits(max_connections=2)
    assert Admission.at_accept(0, limits) is None
    assert Admission.at_accept(1, limits) is None
    assert Admission.at_accept(2, limits) is Refusal.BUSY
    assert Admission.at_accept(3, limits) is Refusal.BUSY


def test_limits_of_a_config_are_this_workers_shares() -> None:
    config = parse_config(
        "OutAddress: 127.0.0.1:2525\nMaxConnections: 5\nMaxConnectionsPerClient: 3\n"
        "StressTimeOut: 4\n"
    )
    assert Limits.of(config) == Limits(5, config.per_client_limit, 4.0)
    shares = [Limits.of(config, k, 3) for k in range(3)]
    assert [s.max_connections for s in shares] == [worker_share(5, k, 3) for k in range(3)]
    assert [s.per_client for s in shares] == [1, 1, 1]  # at least one each
    assert worker_client_share(0, 1, 3) == 0  # no limit stays no limit
    # Counted in the workers' shared table, each applies the whole limit.
    assert {Limits.of(config, k, 3, shared_counts=True).per_client for k in range(3)} == {3}


def test_the_per_client_limit_counts_admitted_clients_until_released() -> None:
    admission = Admission()
    limits = Limits(max_connections=10, per_client=2)
    for _ in range(2):
        assert admission.for_client("192.0.2.1", limits) is None
        assert admission.admit("192.0.2.1", limits) is None
    assert admission.for_client("192.0.2.1", limits) is Refusal.CLIENT_LIMIT
    assert admission.admit("192.0.2.1", limits) is Refusal.CLIENT_LIMIT  # not counted
    assert admission.for_client("192.0.2.2", limits) is None  # another address
    admission.release("192.0.2.1")
    assert admission.for_client("192.0.2.1", limits) is None
    admission.release("192.0.2.1")
    assert isinstance(admission.counts, LocalCounts)
    assert not admission.counts.counts  # nothing left behind for an address that went


def test_exempt_and_unlimited_clients_are_never_refused() -> None:
    config = parse_config(
        "OutAddress: 127.0.0.1:2525\nMaxConnectionsPerClient: 1\n"
        "ConnectionLimitExceptions: 10.0.0.0/8\n"
    )
    assert counted_client(config, "10.1.2.3") is None
    assert counted_client(config, "192.0.2.1") == "192.0.2.1"
    admission = Admission()
    for _ in range(3):
        assert admission.admit(None, Limits(10, 1)) is None
    assert admission.counts.held("10.1.2.3") == 0
    assert admission.admit("192.0.2.1", Limits(10, 0)) is None  # 0: no limit
    assert admission.for_client("192.0.2.1", Limits(10, 0)) is None
    assert admission.for_client("192.0.2.1", Limits(10, 1)) is Refusal.CLIENT_LIMIT


def test_with_no_per_client_limit_nothing_is_counted() -> None:
    # MaxConnectionsPerClient: 0 refuses nobody: no address is counted, so no connection
    # pays for the shared table's lock under Workers.
    config = parse_config("OutAddress: 127.0.0.1:2525\nMaxConnectionsPerClient: 0\n")
    assert counted_client(config, "192.0.2.1") is None


@pytest.mark.parametrize("max_connections", [1, 4, 10, 64])
def test_stress_switches_on_at_its_fraction_and_off_below(max_connections: int) -> None:
    limits = Limits(max_connections, stress_timeout=10.0)
    at = max(1, int(max_connections * STRESS_FRACTION))
    assert limits.stress_from == at
    assert stress_change(at - 1, limits, stressed=False) is None
    assert stress_change(at, limits, stressed=False) is True
    assert stress_change(at + 1, limits, stressed=True) is None
    assert stress_change(at - 1, limits, stressed=True) is False


def test_no_stress_without_stress_timeout() -> None:
    limits = Limits(4, stress_timeout=0)
    assert stress_change(4, limits, stressed=False) is None


def test_the_server_derives_limits_and_relay_settings_once_per_config() -> None:
    """Made at start-up and after a reload, not for every accepted client; a reload's
    config is what the next client gets."""
    from trio_proxsmtp.daemon.server import Server

    first = parse_config("OutAddress: 127.0.0.1:2525\nMaxConnections: 6\nTimeOut: 30\n")
    server = Server(first, workers=2)
    limits, settings = server._for_config()
    assert server._for_config()[1] is settings and server.limits is limits
    assert limits.max_connections == 3 and settings.upstream.timeout == 30
    server.config = parse_config("OutAddress: 127.0.0.1:2525\nMaxConnections: 8\nTimeOut: 9\n")
    limits, settings = server._for_config()
    assert limits.max_connections == 4 and settings.upstream.timeout == 9
