"""MessageTimeOut: one deadline from the client's final "." to its reply (issue 21, item 16).

Before-queue, the client is Postfix, which waits `smtpd_proxy_timeout` (100 s by default)
for the reply to its final "."; past it, Postfix gives up and its client sends again while
the proxy may still deliver: a duplicate.  FilterTimeout, the milters' timeouts and
ReplyTimeOut bound each stage, not their sum, so the proxy bounds the sum
(docs/behaviour.md §8.1):

* The deadline starts when the client's message is read to its end (its final "." or its
  LAST chunk: `Transaction.receive`, `Transaction.receive_chunk`, from the clock read they
  already make).
* Each stage after it (the filter, the milters, our DATA and a replayed envelope, the
  replay) runs in a cancel scope with that deadline (`stage`): one scope per stage of a
  message, none per command.  Past it the stage is cancelled (a filter's process group is
  killed) and `MessageTimedOut` ends the connection with 451 4.4.2: the next server never
  got the final ".", so nothing is delivered.
* The replay's last exchange (the final "." or the LAST chunk) lifts it (`lift`): once
  the message may be delivered, a 4xx would invite the duplicate it is there to prevent,
  so the proxy waits for the next server's reply (ReplyTimeOut) and relays it.  A client
  that leaves meanwhile is the one window where a duplicate can happen: logged and
  counted (`Transaction._commit`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import trio

from trio_proxsmtp.relay.endings import MessageTimedOut

__all__ = ["MessageDeadline"]


class MessageDeadline:
    """The current message's MessageTimeOut (`at`, trio clock; inf: none running)."""

    __slots__ = ("_scope", "at", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.at = math.inf
        self._scope: trio.CancelScope | None = None  # the stage under way

    def start(self, now: float) -> None:
        """The client's message was read to its end at `now`."""
        self.at = now + self.timeout

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """One stage of the message under the deadline; past it, `MessageTimedOut`."""
        with trio.CancelScope(deadline=self.at) as scope:
            self._scope = scope
            try:
                yield
            finally:
                self._scope = None
        if scope.cancelled_caught:
            raise MessageTimedOut(f"{name} not done {self.timeout:g} s after the final '.'")

    def lift(self) -> None:
        """The replay's last exchange begins: no deadline from now on, unless it has
        passed already (then `MessageTimedOut`: the final "." does not go)."""
        scope = self._scope
        if scope is not None:
            if scope.cancel_called:  # (reads the clock: once a message)
                raise MessageTimedOut(f"the replay not done {self.timeout:g} s after the final '.'")
            scope.deadline = math.inf
        self.at = math.inf
