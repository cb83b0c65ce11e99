"""Whether a new connection is admitted: the decision, with no I/O.

`Admission` counts what the decision needs and decides; the server does the I/O (accept,
the refusal's reply, the log lines) and tells it what happened.  Its steps, in order:

1. `at_accept`: MaxConnections.  A worker holding its share (`worker_share`) of the open
   connections refuses the new one as busy.  The limit counts connections, not addresses:
   a connection waiting for its PROXY header counts too, from accept.
2. `for_client`: MaxConnectionsPerClient (docs/behaviour.md, "Limits").  One client
   address may hold at most `Config.per_client_limit` connections (with Workers, each
   worker applies its share, at least one: `worker_client_share`), except the
   ConnectionLimitExceptions networks (`counted_client` is None for them); past it the
   client gets `421 4.7.0`.  Behind a balancer the address is the one its PROXY header
   names, so this step waits for the header.
3. `admit` / `release`: an admitted client's address is counted until its session ends.

Stress (`stress_change`): from STRESS_FRACTION of this worker's MaxConnections on, the
server is under stress and every connection's client waits use StressTimeOut
(deadlines.py); below it, not.  Only with a StressTimeOut set.
"""

from __future__ import annotations

import collections
import enum

import attrs

from trio_proxsmtp.config.model import STRESS_FRACTION, Config

__all__ = [
    "Admission",
    "Limits",
    "Refusal",
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

    Workers share no state, so each applies its part to the connections it holds. A part
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
    per_client: int = 0  # its share of MaxConnectionsPerClient; 0: no limit
    stress_timeout: float = 0  # StressTimeOut; 0: no stress mode

    @classmethod
    def of(cls, config: Config, worker: int = 0, workers: int = 1) -> Limits:
        return cls(
            worker_share(config.max_connections, worker, workers),
            worker_client_share(config.per_client_limit, worker, workers),
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
    (ConnectionLimitExceptions)."""
    return client if config.connection_limit_applies(client) else None


@attrs.define
class Admission:
    """The open connections per client address, and the decisions made on them."""

    # Open connections per client address counted by MaxConnectionsPerClient.
    per_client: collections.Counter[str] = attrs.field(factory=collections.Counter)

    @staticmethod
    def at_accept(open_connections: int, limits: Limits) -> Refusal | None:
        """Step 1, for a connection just accepted (`open_connections` not counting it)."""
        return Refusal.BUSY if open_connections >= limits.max_connections else None

    def for_client(self, counted: str | None, limits: Limits) -> Refusal | None:
        """Step 2: `counted` is the client's counted address (`counted_client`)."""
        if counted is None or not limits.per_client:
            return None
        return Refusal.CLIENT_LIMIT if self.per_client[counted] >= limits.per_client else None

    def admit(self, counted: str | None) -> None:
        """Count an admitted client until `release`."""
        if counted is not None:
            self.per_client[counted] += 1

    def release(self, counted: str | None) -> None:
        """The session `admit` counted has ended."""
        if counted is not None:
            self.per_client[counted] -= 1
            if not self.per_client[counted]:
                del self.per_client[counted]


def stress_change(open_connections: int, limits: Limits, stressed: bool) -> bool | None:
    """The new stress state when `open_connections` changes it from `stressed`, else None
    (never without StressTimeOut)."""
    now = open_connections >= limits.stress_from
    if now == stressed or not limits.stress_timeout:
        return None
    return now
