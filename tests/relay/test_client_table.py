"""client_table.py: MaxConnectionsPerClient's counts shared by forked workers."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from trio_proxsmtp.daemon.admission import (
    Admission,
    Limits,
    Refusal,
    WorkerCounts,
    client_refusal,
)
from trio_proxsmtp.daemon.client_table import ClientTable, table_capacity


@pytest.fixture
def table() -> Iterator[ClientTable]:
    table = ClientTable(3, 16)
    try:
        yield table
    finally:
        table.close()


def below(limit: int) -> Callable[[int], bool]:
    return lambda held: client_refusal(held, limit) is None


def test_capacity_is_a_power_of_two_at_least_twice_max_connections() -> None:
    assert table_capacity(64) == 4096
    assert table_capacity(3000) == 8192
    with pytest.raises(ValueError):
        ClientTable(2, 100)


def test_counts_add_up_over_workers_and_the_limit_is_the_whole(table: ClientTable) -> None:
    assert table.add_if(0, "192.0.2.1", below(3))
    assert table.add_if(1, "192.0.2.1", below(3))
    assert table.add_if(2, "192.0.2.1", below(3))
    assert table.held("192.0.2.1") == 3
    for worker in range(3):  # whichever worker asks, the address is full
        assert not table.add_if(worker, "192.0.2.1", below(3))
    assert table.held("192.0.2.1") == 3
    assert table.add_if(0, "192.0.2.2", below(3))  # another address
    table.remove(1, "192.0.2.1")
    assert table.held("192.0.2.1") == 2
    assert table.add_if(2, "192.0.2.1", below(3))


def test_removing_every_connection_empties_the_table(table: ClientTable) -> None:
    clients = [f"198.51.100.{n}" for n in range(12)]  # 12 of 16 slots: long probe runs
    for n, client in enumerate(clients):
        for _ in range(n % 3 + 1):
            assert table.add_if(n % 3, client, below(0))
    for n, client in enumerate(clients):
        assert table.held(client) == n % 3 + 1
    # Remove in another order: deleting must keep every other address findable.
    for n, client in reversed(list(enumerate(clients))):
        for _ in range(n % 3 + 1):
            table.remove(n % 3, client)
        for m, other in enumerate(clients[:n]):
            assert table.held(other) == m % 3 + 1
    assert all(table.held(c) == 0 for c in clients)
    assert table._map[:] == bytes(len(table._map))  # nothing left behind


def test_clear_worker_forgets_a_dead_workers_connections_only(table: ClientTable) -> None:
    clients = [f"203.0.113.{n}" for n in range(10)]
    for n, client in enumerate(clients):
        table.add_if(1, client, below(0))
        if n % 2:
            table.add_if(2, client, below(0))
    assert table.clear_worker(1) == 10
    for n, client in enumerate(clients):
        assert table.held(client) == (1 if n % 2 else 0)
    assert table.clear_worker(1) == 0
    assert table.add_if(1, clients[0], below(1))  # room again for the replacement


def test_a_full_table_admits_uncounted() -> None:
    table = ClientTable(1, 4)
    try:
        for n in range(4):
            assert table.add_if(0, f"192.0.2.{n}", below(1))
        assert table.add_if(0, "192.0.2.99", below(1))  # fails open
        assert table.held("192.0.2.99") == 0
        table.remove(0, "192.0.2.99")  # nothing to remove: no error
        assert not table.add_if(0, "192.0.2.0", below(1))  # the counted stay exact
    finally:
        table.close()


def test_forked_workers_see_one_table_and_a_dead_holder_leaves_no_lock(
    table: ClientTable,
) -> None:
    # Two processes race to take the last places: exactly the limit is granted.
    read, write = os.pipe()
    pids = []
    for worker in (1, 2):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            granted = sum(table.add_if(worker, "192.0.2.7", below(50)) for _ in range(40))
            os.write(write, bytes([granted]))
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(write)
    granted = sum(os.read(read, 2))
    os.close(read)
    assert granted == 50 and table.held("192.0.2.7") == 50

    # A process killed while it holds the lock does not leave the table locked.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        with table._locked():
            os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(0)
    os.waitpid(pid, os.WUNTRACED)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    started = time.monotonic()
    assert table.add_if(0, "192.0.2.8", below(1))
    assert time.monotonic() - started < 1


def test_admission_with_shared_counts_applies_the_whole_limit(table: ClientTable) -> None:
    one, two = Admission(WorkerCounts(table, 0)), Admission(WorkerCounts(table, 1))
    limits = Limits(max_connections=10, per_client=3)
    assert one.admit("192.0.2.1", limits) is None
    assert two.admit("192.0.2.1", limits) is None
    assert one.admit("192.0.2.1", limits) is None
    assert two.for_client("192.0.2.1", limits) is Refusal.CLIENT_LIMIT
    assert two.admit("192.0.2.1", limits) is Refusal.CLIENT_LIMIT
    one.release("192.0.2.1")
    assert two.admit("192.0.2.1", limits) is None
    assert two.admit(None, limits) is None  # exempt: never counted
    assert table.held("192.0.2.1") == 3


def test_without_shared_memory_the_workers_fall_back_to_their_shares(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trio_proxsmtp.config.loader import parse_config
    from trio_proxsmtp.daemon import service

    config = parse_config("OutAddress: 127.0.0.1:2525\nWorkers: 2\n")
    table = service._client_table(2, config)
    assert table is not None
    table.close()

    def refused(name: str, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "memfd_create", refused)
    assert service._client_table(2, config) is None
