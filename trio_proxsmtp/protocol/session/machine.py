"""The proxy's SMTP session as a state machine: events in, actions out (`Session.handle`).

Sans-IO, in the manner of h11: the relay reads a client command, hands it to the session
as an event (protocol/session/events.py), and performs the actions it gets back in order
(protocol/session/actions.py).  Every action that sends something upstream
(`SendUpstream`, `SendMessage`, a streamed `ReceiveMessage`) joins the session's queue of
pending exchanges (`pending`); the upstream's replies come back in order as
`UpstreamReply` events, each answering the oldest.  Because every reply is paired with the
exchange that asked for it, the envelope is exact when a client pipelines commands (B1,
B18), and the relay pipelines MAIL and RCPT towards a next server that offers PIPELINING
(`pipelinable`): several exchanges are then outstanding at once.

Every input goes through one transition table (protocol/session/table.py): one lookup on
(state, input type) finds its handler and the states it may move to.  An input absent for
the state raises `LocalProtocolError` (our bug) instead of corrupting the envelope, and
the error is sticky: the session refuses every later input.  The session is made of small
machines, each in its own module (AUTH, XCLIENT, TLS to the next server, BDAT, the
milters' envelope replay, the limits); a client command meets the ordered command gates
(protocol/session/gates.py) and the EHLO keywords the proxy changes advertise themselves
(protocol/session/extensions.py).  Only the session writes its state: what the relay
learns (TLS on either side, the client's host name) comes in as events too.
"""

from __future__ import annotations

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.session import gates
from trio_proxsmtp.protocol.session.actions import Action, ReceiveMessage, SendMessage, SendUpstream
from trio_proxsmtp.protocol.session.delivery import carries_message
from trio_proxsmtp.protocol.session.events import Event, UpstreamReply
from trio_proxsmtp.protocol.session.limits import size_limit
from trio_proxsmtp.protocol.session.state import SessionState
from trio_proxsmtp.protocol.session.table import TABLE
from trio_proxsmtp.protocol.smtp.commands import Command

__all__ = ["Session"]

# Actions whose upstream reply the session waits for (a streamed message is the third).
_AWAITS_REPLY = (SendUpstream, SendMessage)


class Session(SessionState):
    """One client connection's SMTP state; see the module docstring."""

    # -- the one entry point ------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Take one input; return the actions to perform, in order.  The upstream-bound
        ones are queued for their replies; HardErrorLimit may add its 421 and Close."""
        if self._error is not None:
            raise LocalProtocolError(f"session already failed: {self._error}")
        try:
            if type(event) is UpstreamReply:
                exchange = self._answered(event)
                if event.seconds and carries_message(exchange):  # (timed: our DATA, the replay)
                    self.facts.upstream += event.seconds
                what = exchange.purpose if isinstance(exchange, SendUpstream) else type(exchange)
                move = TABLE.get((self.state, what))
                if move is None:
                    raise LocalProtocolError(
                        f"a reply to {what} illegal in state {self.state.value}"
                    )
                actions = move.handler(self, exchange, event.reply)
            else:
                move = TABLE.get((self.state, type(event)))
                if move is None:
                    name = type(event).__name__
                    raise LocalProtocolError(f"{name} illegal in state {self.state.value}")
                actions = move.handler(self, event)
            if self.state not in move.targets:
                raise LocalProtocolError(f"{event!r} moved the session to {self.state.value}")
            return self._emit(actions)
        except LocalProtocolError as exc:
            self._error = exc  # once an input was illegal, every later one fails too
            raise

    def _answered(self, event: UpstreamReply) -> Action:
        exchanges = self.exchanges
        if not exchanges:
            raise LocalProtocolError("no upstream reply expected")
        if event.exchange is not None and exchanges[0] != event.exchange:
            raise LocalProtocolError(f"no upstream reply expected for {event.exchange!r}")
        return exchanges.popleft()

    def _emit(self, actions: list[Action]) -> list[Action]:
        """Queue the actions that expect an upstream reply; the relay performs them in
        order, so their replies arrive in this order.  The list returned is HardErrorLimit's
        (it may add 421 and Close)."""
        for action in actions:
            if isinstance(action, _AWAITS_REPLY) or (
                isinstance(action, ReceiveMessage) and action.stream
            ):
                self.exchanges.append(action)
        return self.limits.count(actions)

    # -- what the relay may ask ---------------------------------------------------------

    def pipelinable(self, command: Command) -> bool:
        """Whether `command` may join a pipelined group towards the next server (RFC 2920):
        see protocol/session/gates.py."""
        return self._error is None and gates.pipelinable(self, command)

    @property
    def in_auth(self) -> bool:
        """The next client line is an AUTH continuation (credentials), not a command."""
        return self.auth.in_progress

    @property
    def authenticated(self) -> bool:
        return self.auth.authenticated

    @property
    def upstream_tls(self) -> bool:
        """The next server's connection is TLS."""
        return self.outtls.active

    @property
    def errors(self) -> int:
        """4xx/5xx replies to the client since the last delivered message."""
        return self.limits.errors

    @property
    def pending(self) -> tuple[Action, ...]:
        """The exchanges sent upstream and not yet answered, oldest first."""
        return tuple(self.exchanges)

    @property
    def size_limit(self) -> int | None:
        """The largest message accepted: MaxMessageSize or the upstream's SIZE, the smaller."""
        return size_limit(self)

    def dispatch(self, command: Command, *, entry: bool = False) -> list[Action]:
        """A client command through the gates (`entry`: it just came from the client)."""
        return gates.dispatch(self, command, entry=entry)
