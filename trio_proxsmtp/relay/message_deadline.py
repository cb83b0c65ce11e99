"""MessageTimeOut: one deadline from the client's final "." to its reply (issue 21, item 16).

Before-queue, the client is Postfix, which waits `smtpd_proxy_timeout` (100 s by default)
for the reply to its final "."; past it, Postfix gives up and its client sends again while
the proxy may still deliver: a duplicate.  FilterTimeout, the milters' timeouts and
ReplyTimeOut bound each stage, not their sum, so the proxy bounds the sum
(docs/behaviour.md §8.1):

* The deadline starts when the client's message is read to its end (its final "." or its
  LAST chunk: `Transaction.receive`, `Transaction.receive_chunk`, from the clock read they
  already make).
* It is the deadline of the connection's cancel scope (`bind`), moved, not a scope of its
  own per stage: entering and leaving a cancel scope for each stage of every message (our
  DATA and the replay, at least) cost more than the rest of the deadline's work
  (bench/PROFILE.md, phase 5).  Past it, everything under way for the message (the filter,
  whose process group is killed, the milters, our DATA or a replayed envelope, the replay)
  is cancelled, and the connection ends with `MessageTimedOut` (`expired`): 451 4.4.2 to
  the client; the next server never got the final ".", so nothing is delivered.  `stage`
  only names the stage under way for that error.
* The replay's last exchange (the final "." or the LAST chunk) lifts it (`lift`): once
  the message may be delivered, a 4xx would invite the duplicate it is there to prevent,
  so the proxy waits for the next server's reply (ReplyTimeOut) and relays it.  A client
  that leaves meanwhile is the one window where a duplicate can happen: logged and
  counted (`Transaction._commit`).  The message's end (`Transaction.close`: `at = inf`)
  lifts it too.
"""

from __future__ import annotations

import math
from types import TracebackType

import trio

from trio_proxsmtp.relay.endings import MessageTimedOut

__all__ = ["MessageDeadline"]


class MessageDeadline:
    """The current message's MessageTimeOut (`at`, trio clock; inf: none running), carried
    by the connection's cancel scope."""

    __slots__ = ("_at", "_lapsed", "_scope", "name", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._at = math.inf
        self._scope: trio.CancelScope | None = None  # the connection's (`bind`)
        self.name = "the message"  # the stage under way, for the error
        # Lifted after it had passed and cancelled the scope (the message's end raced
        # with it): the cancellation that follows is still this deadline's.
        self._lapsed = False

    def bind(self, scope: trio.CancelScope) -> None:
        """The connection's cancel scope, whose cancellation ends the connection: the
        connection asks `expired` whether it was this deadline."""
        self._scope = scope

    @property
    def at(self) -> float:
        return self._at

    @at.setter
    def at(self, value: float) -> None:
        if value != self._at:
            scope = self._scope
            assert scope is not None, "MessageDeadline.bind first"
            if value == math.inf and self._at <= trio.current_time() and scope.cancel_called:
                self._lapsed = True
            self._at = value
            scope.deadline = value

    def start(self, now: float) -> None:
        """The client's message was read to its end at `now`."""
        self._lapsed = False
        self.at = now + self.timeout

    def stage(self, name: str) -> MessageDeadline:
        """`with deadline.stage(name):` names the stage under way (nothing to enter: the
        deadline is the connection's)."""
        self.name = name
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def expired(self) -> MessageTimedOut | None:
        """After the connection's scope was cancelled: the error if this deadline did it."""
        if self._lapsed or self._at <= trio.current_time():
            return MessageTimedOut(f"{self.name} not done {self.timeout:g} s after the final '.'")
        return None

    def lift(self) -> None:
        """The replay's last exchange begins: no deadline from now on, unless it has
        passed already (then `MessageTimedOut`: the final "." does not go)."""
        if self._at <= trio.current_time():  # (reads the clock: once a message)
            raise MessageTimedOut(f"the replay not done {self.timeout:g} s after the final '.'")
        self.at = math.inf
