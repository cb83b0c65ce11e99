"""A graceful stop (SIGTERM/SIGINT; docs/behaviour.md §11.10): when the accept loops end,
and the grace period of the sessions open then.

The first `Drain.stop` makes the process `draining` at once: /readyz answers 503 from then
on (readiness.py), so that a balancer takes it out of its rotation.  Its accept loops go on
for DrainDelay seconds, taking and serving new clients as ever, so that the connections
the balancer still sends before its next check are served, not refused; with DrainDelay 0
(the default, proxsmtpd 1.10's way) they stop at once.  Then the server closes its
listeners and drains: idle sessions get 421, sessions in the middle of a message get
ShutdownTimeout seconds (`wait_for_sessions`).  The second `stop` ends the delay and the
grace period at once, whichever is under way.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import attrs
import trio

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.daemon import notify

__all__ = ["Drain"]

log = logging.getLogger(LOGGER_NAME)


@attrs.define
class Drain:
    """One server's stop: the accept loops' scope, the grace period's, and the state."""

    draining: bool = False  # a stop came: not ready (/readyz), SIGHUP ignored
    sessions_draining: bool = False  # the listeners are closed: new sessions are drained too
    accepting: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    grace: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    _idle: trio.Event = attrs.field(factory=trio.Event)

    def stop(self, delay: float) -> None:
        """The first call: draining now, accepting for `delay` seconds more (0: none).
        Any later call ends the delay and the grace period."""
        if self.draining:
            self.accepting.cancel()
            self.grace.cancel()
            return
        self.draining = True
        if delay > 0:
            log.info("draining: still accepting for %g s (DrainDelay)", delay)
            # systemd: stopping from now on (the drain's own STATUS follows the delay).
            notify.notify("STOPPING=1", f"STATUS=draining: still accepting for {delay:g} s")
            self.accepting.deadline = min(self.accepting.deadline, trio.current_time() + delay)
        else:
            self.accepting.cancel()

    def cut_short(self) -> bool:
        """Whether a second stop ended the grace period."""
        return self.grace.cancel_called

    def connection_ended(self) -> None:
        """Wake `wait_for_sessions`: one of the sessions it waits for may be the last."""
        self._idle.set()

    async def wait_for_sessions(self, sessions: Collection[object], timeout: float) -> None:
        """Wait until `sessions` is empty, at most `timeout` seconds or until the second
        stop; the caller cuts short the sessions left."""
        self.draining = self.sessions_draining = True
        with self.grace:
            self.grace.deadline = trio.current_time() + timeout
            while sessions:
                self._idle = trio.Event()
                await self._idle.wait()
