"""Deadlines for whole records, not single reads (issue 16: slowloris).

TimeOut alone measures the silence between two reads, so a peer that sends one byte every
few seconds never times out.  These deadlines bound a whole record instead
(docs/behaviour.md, "Limits"):

* CommandTimeOut: a client command line, from the moment the proxy is ready for it to its
  line feed; bytes arriving do not extend it.
* MinDataRate: a message (DATA, or a refused BDAT chunk).  It starts with TimeOut seconds;
  each read of N bytes adds N/MinDataRate seconds, never past TimeOut from now.
* SessionTimeOut: the whole session; checked while waiting for a command, so a message in
  flight finishes first.
* StressTimeOut: under stress (from STRESS_FRACTION of MaxConnections on) it replaces
  TimeOut and CommandTimeOut for client waits when it is shorter; `Stress` is the flag the
  server sets and every connection reads.  A wait already under way when stress comes is
  cut to StressTimeOut from its start.
* ReplyTimeOut (upstream.py): a whole upstream reply, the banner included.

Each wait stays one cancel scope per read, as before: only its deadline is computed
differently, so no task and no system call is added.
"""

from __future__ import annotations

import math

import attrs
import trio

from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.relay.settings import DeadlineSettings

__all__ = ["ClientDeadlines", "Stress"]


class Stress:
    """Whether the server is near its connection limit (set by the server), and the client
    waits under way: switching it on shortens them too, not only the waits to come."""

    __slots__ = ("on", "waiting")

    def __init__(self, on: bool = False) -> None:
        self.on = on  # read on every client wait: a plain attribute; changed by `switch`
        # A client read's cancel scope -> its deadline under stress (ClientChannel.receive).
        self.waiting: dict[trio.CancelScope, float] = {}

    def switch(self, value: bool, metrics: Metrics = NULL_METRICS) -> None:
        """Stress on or off (the `proxsmtpd_stress` gauge follows); on also cuts the client
        waits under way."""
        self.on = value
        metrics.stress_changed(value)
        if value:
            for scope, stressed in self.waiting.items():
                if stressed < scope.deadline:
                    scope.deadline = stressed


@attrs.frozen
class ClientDeadlines:
    """The client-side limits of one connection; `Stress` is shared with the server.

    Frozen: what each limit is under stress is worked out once (`_idle_stressed`,
    `_command_stressed`), so a deadline asks only `stress.on` (a few calls per message
    saved; bench/calls.py)."""

    timeout: float  # TimeOut: the longest silence between two reads
    command_timeout: float = math.inf
    min_data_rate: int = 0  # bytes/s; 0: off
    session_deadline: float = math.inf  # absolute, trio clock
    stress_timeout: float = 0.0  # 0: off
    stress: Stress = attrs.field(factory=Stress)
    # TimeOut and CommandTimeOut under stress: StressTimeOut when it is on and shorter.
    _idle_stressed: float = attrs.field(init=False)
    _command_stressed: float = attrs.field(init=False)

    @_idle_stressed.default
    def _idle_under_stress(self) -> float:
        return self._stressed(self.timeout)

    @_command_stressed.default
    def _command_under_stress(self) -> float:
        return self._stressed(self.command_timeout)

    @classmethod
    def from_settings(
        cls, settings: DeadlineSettings, stress: Stress | None = None
    ) -> ClientDeadlines:
        """A connection's deadlines, its session starting now."""
        session = settings.session_timeout
        return cls(
            timeout=settings.timeout,
            command_timeout=settings.command_timeout,
            min_data_rate=settings.min_data_rate,
            session_deadline=trio.current_time() + session if session > 0 else math.inf,
            stress_timeout=settings.stress_timeout,
            stress=stress if stress is not None else Stress(),
        )

    def _stressed(self, seconds: float) -> float:
        """`seconds` under stress: StressTimeOut when it is set and shorter."""
        if self.stress_timeout > 0:
            return min(seconds, self.stress_timeout)
        return seconds

    def idle(self) -> float:
        """The longest silence allowed now."""
        return self._idle_stressed if self.stress.on else self.timeout

    def command_deadline(self, ready: float) -> tuple[float, str]:
        """The deadline of the command line the proxy was ready for at `ready`, and its
        name; asked again before each read (a wait under way is cut by `Stress.switch`)."""
        deadline = ready + (self._command_stressed if self.stress.on else self.command_timeout)
        if self.session_deadline < deadline:
            return self.session_deadline, "SessionTimeOut"
        return deadline, "CommandTimeOut"

    def data_start(self) -> float:
        """The first deadline of a message (MinDataRate): TimeOut from now; inf if off."""
        if self.min_data_rate <= 0:
            return math.inf
        return trio.current_time() + (self._idle_stressed if self.stress.on else self.timeout)

    def data_read(self, deadline: float, size: int) -> float:
        """The deadline after a read of `size` message bytes (MinDataRate)."""
        if self.min_data_rate <= 0:
            return math.inf
        idle = trio.current_time() + (self._idle_stressed if self.stress.on else self.timeout)
        later = deadline + size / self.min_data_rate
        return later if later < idle else idle
