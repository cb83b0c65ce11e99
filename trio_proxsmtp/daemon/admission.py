"""Whether a new connection is admitted: the decision, with no I/O.

`Admission` counts what the decision needs and decides; the server does the I/O (accept,
the refusal's reply, the log lines) and tells it what happened.  Its steps, in order:

1. `at_accept`: MaxConnections.  A worker holding its share (`worker_share`) of the open
   connections refuses the new one as busy.  The limit counts connections, not addresses:
   a connection waiting for its PROXY header counts too, from accept.
2. `admit`: MaxConnectionsPerClient (docs/behaviour.md §8.1).  One client address may
   hold at most `Config.per_client_limit` connections, except the
   ConnectionLimitExceptions networks (`counted_client` is None for them); past it the
   client gets `421 4.7.0`.  Behind a balancer the address is the one its PROXY header
   names, so this step waits for the header.  The rule is `client_refusal`; the counts
   it reads are `ClientCounts`: this process's own (`LocalCounts`), or with Workers the
   table all workers share (client_table.py), where the count is read, decided on and
   raised in one step under a lock, so the limit is exact whichever worker the kernel
   picks.  Without a shared table (a worker run alone, as in tests) each worker applies
   its share, at least one (`worker_client_share`).
3. `release`: an admitted client's address is counted until its session ends.

Stress (`stress_change`): from STRESS_FRACTION of this worker's MaxConnections on, the
server is under stress and every connection's client waits use StressTimeOut
(deadlines.py); below it, not.  Only with a StressTimeOut set.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from typing import Protocol

import attrs

from trio_proxsmtp.config.model import STRESS_FRACTION, Config

__all__ = [
    "Admission",
    "ClientCounts",
    "Limits",
    "LocalCounts",
    "Refusal",
    "WorkerCounts",
    "client_refusal",
    "counted_client",
    "stress_change",
    "worker_client_share",
    "worker_share",
]


def worker_share(max_connections: int, worker: int, workers: int) -> int:
    """Worker `worker` (0-based) of `workers`' part of MaxConnections; the parts add up."""
    return max_connections // workers + (1 if worker < max_connections % workers else 0)


def worker_client_share(limit: int, worker: int, workers: int) -> int:
    """Worker `worker`'s part of MaxConnectionsPerClient `limit` (0: no limit).

    Without the shared table (client_table.py) each applies its part to the connections
    it holds. A part
    is at least one: a part of 0 would refuse the address on that worker outright however
    few connections it holds elsewhere. So one address holds at most
    max(limit, workers) connections over all workers."""
    if not limit:
        return 0
    return max(1, worker_share(limit, worker, workers))


@attrs.frozen
class Limits:
    """One worker's part of a config's connection limits."""

    max_connections: int  # this worker's share of MaxConnections
    per_client: int = 0  # MaxConnectionsPerClient (its share, counted alone); 0: no limit
    stress_timeout: float = 0  # StressTimeOut; 0: no stress mode

    @classmethod
    def of(
        cls, config: Config, worker: int = 0, workers: int = 1, shared_counts: bool = False
    ) -> Limits:
        """`shared_counts`: the per-client counts are all workers' (the whole limit applies),
        not this worker's own (its share does)."""
        per_client = config.per_client_limit
        return cls(
            worker_share(config.max_connections, worker, workers),
            per_client if shared_counts else worker_client_share(per_client, worker, workers),
            config.stress_timeout,
        )

    @property
    def stress_from(self) -> int:
        """The number of open connections from which the server is under stress."""
        return max(1, int(self.max_connections * STRESS_FRACTION))


class Refusal(enum.Enum):
    """Why a connection is turned away."""

    BUSY = "busy"  # MaxConnections: `421 Server busy`
    CLIENT_LIMIT = "client-limit"  # MaxConnectionsPerClient: `421 4.7.0`


def counted_client(config: Config, client: str) -> str | None:
    """The address MaxConnectionsPerClient counts for `client`; None when it is exempt
    (ConnectionLimitExceptions) or there is no limit (nothing to count, nor to lock)."""
    if not config.per_client_limit:
        return None
    return client if config.connection_limit_applies(client) else None


def client_refusal(held: int, limit: int) -> Refusal | None:
    """MaxConnectionsPerClient's rule: an address holding `held` connections (over every
    process the counts cover) may open one more below `limit` (0: no limit)."""
    return Refusal.CLIENT_LIMIT if limit and held >= limit else None


class ClientCounts(Protocol):
    """Open connections per counted client address."""

    shared: bool  # True: the counts of all workers (client_table.py), not this process's

    def held(self, client: str) -> int: ...

    def add_if(self, client: str, allowed: Callable[[int], bool]) -> bool:
        """Count one more for `client` if `allowed(held)`, in one step; False if not."""
        ...

    def remove(self, client: str) -> None: ...


@attrs.define
class LocalCounts:
    """This process's own counts."""

    shared = False
    counts: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def held(self, client: str) -> int:
        return self.counts[client]

    def add_if(self, client: str, allowed: Callable[[int], bool]) -> bool:
        if not allowed(self.counts[client]):
            return False
        self.counts[client] += 1
        return True

    def remove(self, client: str) -> None:
        self.counts[client] -= 1
        if self.counts[client] <= 0:
            del self.counts[client]


class _Table(Protocol):
    def held(self, client: str) -> int: ...
    def add_if(self, worker: int, client: str, allowed: Callable[[int], bool]) -> bool: ...
    def remove(self, worker: int, client: str) -> None: ...


@attrs.define
class WorkerCounts:
    """Worker `worker`'s view of the table all workers share (client_table.ClientTable)."""

    table: _Table
    worker: int
    shared = True

    def held(self, client: str) -> int:
        return self.table.held(client)

    def add_if(self, client: str, allowed: Callable[[int], bool]) -> bool:
        return self.table.add_if(self.worker, client, allowed)

    def remove(self, client: str) -> None:
        self.table.remove(self.worker, client)


@attrs.define
class Admission:
    """The open connections per client address, and the decisions made on them."""

    counts: ClientCounts = attrs.field(factory=LocalCounts)

    @staticmethod
    def at_accept(open_connections: int, limits: Limits) -> Refusal | None:
        """Step 1, for a connection just accepted (`open_connections` not counting it)."""
        return Refusal.BUSY if open_connections >= limits.max_connections else None

    def for_client(self, counted: str | None, limits: Limits) -> Refusal | None:
        """Step 2 without counting (what `admit` would decide now)."""
        if counted is None:
            return None
        return client_refusal(self.counts.held(counted), limits.per_client)

    def admit(self, counted: str | None, limits: Limits) -> Refusal | None:
        """Step 2: `counted` is the client's counted address (`counted_client`); admitted
        (None), it is counted until `release`."""
        if counted is None:
            return None
        if self.counts.add_if(
            counted, lambda held: client_refusal(held, limits.per_client) is None
        ):
            return None
        return Refusal.CLIENT_LIMIT

    def release(self, counted: str | None) -> None:
        """The session `admit` counted has ended."""
        if counted is not None:
            self.counts.remove(counted)


def stress_change(open_connections: int, limits: Limits, stressed: bool) -> bool | None:
    """The new stress state when `open_connections` changes it from `stressed`, else None
    (never without StressTimeOut)."""
    now = open_connections >= limits.stress_from
    if now == stressed or not limits.stress_timeout:
        return None
    return now
