"""The proxy's SMTP session as a state machine: commands and replies in, actions out.

Sans-IO, in the manner of h11: the relay reads a client command, hands it to `Session`, and
performs the actions it gets back in order.  Every action that sends something upstream
(`SendUpstream`, `SendMessage`, a streamed `ReceiveMessage`) joins the session's own queue
of pending exchanges (`pending`); the upstream's replies are fed back in order with
`upstream_reply(reply)`, each answering the oldest, and return the next actions.  Because
every reply is paired with the exchange that asked for it, the envelope is exact even when
a client pipelines commands (B1, B18); today the relay has one exchange outstanding at a
time, and a group of pipelined commands towards the upstream needs no change here.

Which input is legal in which state (`_LEGAL`) and where a positive reply moves the session
(`_AFTER_POSITIVE`) are tables.  An illegal input raises `LocalProtocolError` (our bug)
instead of corrupting the envelope, and the error is sticky: the session refuses every
later input.  New features come as actions and rows, not as changes to the relay's loop:
STARTTLS towards the client is the `StartTLS` action and `tls_started`; PIPELINING towards
the client needs nothing but the keyword (replies are paired anyway).
"""

from __future__ import annotations

import collections
import enum
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Concatenate, ParamSpec, TypeVar

import attrs

from trio_proxsmtp.protocol.actions import (
    Action,
    Close,
    Log,
    Outcome,
    Purpose,
    ReceiveMessage,
    RunFilter,
    SendClient,
    SendMessage,
    SendUpstream,
    SkipBytes,
    StartTLS,
    Summary,
)
from trio_proxsmtp.protocol.commands import (
    BAD_CHARACTER,
    Command,
    Verb,
    xforward_value,
    xtext_encode,
)
from trio_proxsmtp.protocol.ehlo import (
    Extensions,
    advertise,
    parse_extensions,
    rewrite_banner,
    rewrite_ehlo_reply,
    rewrite_helo_reply,
)
from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.replies import LOCAL_ERROR, Reply

__all__ = [
    "LOCAL_ERROR",
    "Action",
    "Close",
    "Envelope",
    "Log",
    "Outcome",
    "Purpose",
    "ReceiveMessage",
    "RunFilter",
    "SendClient",
    "SendMessage",
    "SendUpstream",
    "Session",
    "SessionPolicy",
    "SkipBytes",
    "StartTLS",
    "State",
    "Summary",
]

# Fixed wire strings (docs/behaviour.md §10): clients and log parsers depend on them.
START_MAIL_INPUT = Reply.single(354, "Start mail input; end with <CRLF>.<CRLF>")
NOT_IMPLEMENTED = Reply.single(502, "Command not implemented")
INSUFFICIENT_AUTHORIZATION = Reply.single(554, "Insufficient authorization")
LINE_TOO_LONG = Reply.single(500, "5.5.2 Line too long")
NEED_MAIL = Reply.single(503, "5.5.1 Error: need MAIL command")
NO_VALID_RECIPIENTS = Reply.single(554, "5.5.1 Error: no valid recipients")
MESSAGE_TOO_BIG = Reply.single(552, "5.3.4 Message size exceeds fixed limit")
READY_TO_START_TLS = Reply.single(220, "2.0.0 Ready to start TLS")
TLS_ALREADY_ACTIVE = Reply.single(503, "5.5.1 Error: TLS already active")
TLS_NO_PARAMETERS = Reply.single(501, "5.5.4 Syntax: STARTTLS")
TLS_IN_TRANSACTION = Reply.single(503, "5.5.1 Error: MAIL transaction in progress")
# Limits on hostile clients (docs/behaviour.md, "Limits"); never forwarded.
TOO_MANY_RECIPIENTS = Reply.single(452, "4.5.3 Too many recipients")
TOO_MANY_ERRORS = Reply.single(421, "4.7.0 Error: too many errors")


class State(enum.Enum):
    GREETING = "greeting"  # waiting for the upstream's banner
    HELO = "helo"  # banner relayed; no HELO/EHLO accepted yet
    MAIL = "mail"  # ready for a transaction
    RCPT = "rcpt"  # sender accepted; recipients may follow
    DATA = "data"  # the client is sending its message
    FILTERING = "filtering"  # the message is spooled; the filter runs
    REPLAY = "replay"  # our DATA, the message and its final reply, upstream
    QUIT = "quit"  # QUIT answered; the connection closes


# States in which a client command line may arrive.
_COMMAND_STATES = frozenset({State.HELO, State.MAIL, State.RCPT})
# States in which a message is on its way.
_MESSAGE_STATES = frozenset({State.DATA, State.FILTERING, State.REPLAY})

# Where each input of the relay is legal; anything else is our bug (LocalProtocolError).
_LEGAL: dict[str, frozenset[State]] = {
    "greeting": frozenset({State.GREETING}),
    "line_too_long": _COMMAND_STATES,
    "bad_command_line": _COMMAND_STATES,
    "command": _COMMAND_STATES,
    "message_received": frozenset({State.DATA}),
    "message_failed": frozenset({State.DATA}),
    "filter_done": frozenset({State.FILTERING}),
    "tls_started": _COMMAND_STATES,
}

# The state a positive reply to a client command moves to (others keep the state; RSET is
# the one conditional move, back from RCPT to MAIL).
_AFTER_POSITIVE = {Verb.EHLO: State.MAIL, Verb.HELO: State.MAIL, Verb.MAIL: State.RCPT}

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _input(
    method: Callable[Concatenate[Session, _P], _R],
) -> Callable[Concatenate[Session, _P], _R]:
    """An input from the relay: legal only in the states `_LEGAL` names for it, refused
    once the session has failed, and its upstream-bound actions queued for their replies."""
    legal = _LEGAL[method.__name__]

    def wrapper(self: Session, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._sticky():
            self._expect(*legal)
            result = method(self, *args, **kwargs)
            if isinstance(result, list):
                self._emit(result)
            return result

    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


# ---------------------------------------------------------------------------------------


@attrs.frozen
class SessionPolicy:
    """What the configuration decides for one connection."""

    client: str  # the client's address as CLIENT shows it ("" for an unnamed unix peer)
    client_is_ipv6: bool = False
    filtering: bool = True  # a FilterCommand is set
    reject: Reply | None = None  # FilterType: reject -> the FilterReject reply
    skip_authenticated: bool = False
    xclient: bool = False
    xclient_name: str | None = None  # the client's host name for XCLIENT NAME=, if known
    max_message_size: int | None = None  # MaxMessageSize (None: only the upstream's SIZE)
    pipelining: bool = False  # advertise PIPELINING to the client
    starttls: bool = False  # a certificate is configured: offer STARTTLS to the client
    max_recipients: int = 0  # MaxRecipients: accepted recipients per transaction; 0: none
    hard_error_limit: int = 0  # HardErrorLimit: error replies before 421 and close; 0: none


@attrs.define
class Envelope:
    """What the upstream accepted for the current transaction (docs/behaviour.md §4.2, §6.1)."""

    sender: str | None = None
    recipients: list[str] = attrs.field(factory=list)
    remote_addr: str | None = None  # from an accepted XFORWARD ADDR=
    remote_helo: str | None = None  # from an accepted XFORWARD HELO=


class Session:
    """One client connection's SMTP state; see the module docstring."""

    def __init__(self, policy: SessionPolicy) -> None:
        self.policy = policy
        self.state = State.GREETING
        self.envelope = Envelope()
        self.authenticated = False
        self.extensions = Extensions(frozenset(), None)
        self.helo_line: bytes | None = None  # the client's accepted HELO/EHLO, for XCLIENT
        self.helo_name: str | None = None
        self._auth_started = False
        self._in_auth = False  # an AUTH exchange is waiting for client continuation lines
        self._xclient_supported = False
        self._xclient_sent = False
        self.messages = 0  # transactions finished on this connection
        self.tls = False  # the client connection is TLS (after STARTTLS)
        # Exchanges sent upstream, oldest first: each upstream reply answers the head.
        self._pending: collections.deque[Action] = collections.deque()
        self._error: LocalProtocolError | None = None  # sticky: set once, refuses all
        self.errors = 0  # 4xx/5xx replies to the client since the last delivered message

    @property
    def in_message(self) -> bool:
        """A message is on its way (received, filtered or replayed) and not yet answered."""
        return self.state in _MESSAGE_STATES

    @property
    def in_auth(self) -> bool:
        """The next client line is an AUTH continuation (credentials), not a command."""
        return self._in_auth

    # -- inputs -------------------------------------------------------------------------

    @_input
    def greeting(self, reply: Reply) -> list[Action]:
        """The upstream's banner."""
        self.state = State.HELO
        return [SendClient(rewrite_banner(reply))]

    @_input
    def line_too_long(self) -> list[Action]:
        """A client command line over the limit: answered, never forwarded (docs/behaviour.md
        §4.1)."""
        return [SendClient(LINE_TOO_LONG)]

    @_input
    def bad_command_line(self, reason: str) -> list[Action]:
        """A client line with a byte no command may hold (protocol.commands.
        check_command_line): answered, never forwarded, AUTH continuations included."""
        note = Log(logging.WARNING, f"refused a command line: {reason}")
        if self._in_auth:
            # The upstream waits for a continuation: cancel the exchange (RFC 4954 "*"); its
            # 501 is the client's answer, and AUTH is over on both sides.
            return [note, SendUpstream(b"*\r\n", Purpose.AUTH_CONTINUATION)]
        return [note, SendClient(BAD_CHARACTER)]

    @_input
    def command(self, command: Command) -> list[Action]:
        """A client command line (only in the command states)."""
        if self._in_auth:
            return [SendUpstream(command.line, Purpose.AUTH_CONTINUATION, command)]
        if self._xclient_armed() and command.verb is not Verb.QUIT:
            # The command is dispatched only once the XCLIENT exchange is over, so that
            # nothing it changes (the state, the envelope) is seen by the swallowed replies.
            self._xclient_sent = True
            return [SendUpstream(self._xclient_line(), Purpose.XCLIENT, command)]
        return self._dispatch(command)

    def upstream_reply(self, reply: Reply) -> list[Action]:
        """The upstream's next complete reply: it answers the oldest exchange pending."""
        with self._sticky():
            if not self._pending:
                raise LocalProtocolError("no upstream reply expected")
            return self._emit(self._reply(self._pending.popleft(), reply))

    def reply(self, action: Action, reply: Reply) -> list[Action]:
        """The upstream's complete reply to `action`, which must be the oldest pending."""
        with self._sticky():
            if not self._pending or self._pending[0] != action:
                raise LocalProtocolError(f"no upstream reply expected for {action!r}")
            return self._emit(self._reply(self._pending.popleft(), reply))

    @property
    def pending(self) -> tuple[Action, ...]:
        """The exchanges sent upstream and not yet answered, oldest first."""
        return tuple(self._pending)

    def _reply(self, action: Action, reply: Reply) -> list[Action]:
        if isinstance(action, SendUpstream):
            return self._reply_to_line(action, reply)
        if isinstance(action, SendMessage):
            self._expect(State.REPLAY)
            return self._finish_message(reply, self._filter_outcome())
        if isinstance(action, ReceiveMessage) and action.stream:
            self._expect(State.DATA)
            return self._finish_message(reply, Outcome.SKIPPED)
        raise LocalProtocolError(f"no upstream reply expected for {action!r}")

    @property
    def size_limit(self) -> int | None:
        """The largest message accepted: MaxMessageSize or the upstream's SIZE, the smaller."""
        limits = [x for x in (self.policy.max_message_size, self.extensions.size_limit) if x]
        return min(limits) if limits else None

    @_input
    def message_received(self, size: int) -> list[Action]:
        """The client's message is spooled (`size` bytes, un-stuffed)."""
        limit = self.size_limit
        if limit is not None and size > limit:
            return self._abandon_message(MESSAGE_TOO_BIG, Outcome.TOO_BIG, f"size {size}")
        if self.policy.filtering:
            self.state = State.FILTERING
            return [RunFilter()]
        self.state = State.REPLAY
        return [SendUpstream(b"DATA\r\n", Purpose.DATA)]

    @_input
    def message_failed(self, reply: Reply, detail: str) -> list[Action]:
        """The message could not be spooled (disk full...); it was still read to its end."""
        return self._abandon_message(reply, Outcome.FILTER_ERROR, detail)

    @_input
    def filter_done(
        self, accepted: bool, reply: Reply | None, outcome: Outcome, detail: str = ""
    ) -> list[Action]:
        """The filter's verdict: accepted -> replay; otherwise `reply` goes to the client."""
        if accepted:
            self.state = State.REPLAY
            return [SendUpstream(b"DATA\r\n", Purpose.DATA)]
        if reply is None:
            raise LocalProtocolError("a rejected message needs a reply")
        return self._abandon_message(reply, outcome, detail)

    def abort(self, reason: str) -> list[Action]:
        """The connection ends in the middle of a message: nothing was delivered, and the
        message still gets its one summary line (1.10 logged FILTER-ERROR here too)."""
        self._pending.clear()
        if not self.in_message:
            return []
        summary = self._summary(Outcome.FILTER_ERROR, reason)
        self._end_transaction()
        return [summary]

    # -- commands -----------------------------------------------------------------------

    def _dispatch(self, command: Command) -> list[Action]:
        verb = command.verb
        if verb is Verb.STARTTLS and self.policy.starttls:
            return self._starttls(command)
        if verb in (Verb.STARTTLS, Verb.BDAT):
            actions: list[Action] = [SendClient(NOT_IMPLEMENTED)]
            chunk = _bdat_size(command) if verb is Verb.BDAT else 0
            if chunk:
                actions.insert(0, SkipBytes(chunk))
            return actions
        if verb is Verb.XCLIENT:
            return [
                Log(logging.WARNING, "client attempted use of privileged XCLIENT feature"),
                SendClient(INSUFFICIENT_AUTHORIZATION),
            ]
        if verb in (Verb.MAIL, Verb.RCPT) and self._rejecting():
            self._reset_envelope()
            return [SendClient(self._reject_reply())]
        if verb is Verb.RCPT and self._too_many_recipients():
            return [SendClient(TOO_MANY_RECIPIENTS)]
        if verb is Verb.MAIL and self._declared_too_big(command):
            # RFC 1870: refused at once, never forwarded; the upstream's own SIZE it checks itself.
            return [
                Log(logging.INFO, f"refused MAIL over MaxMessageSize: {command.argument}"),
                SendClient(MESSAGE_TOO_BIG),
            ]
        if verb is Verb.DATA:
            return self._data()
        return [SendUpstream(command.line, Purpose.COMMAND, command)]

    def _data(self) -> list[Action]:
        if self._rejecting():
            # Nothing reaches the upstream; its transaction (if any) is reset.
            reply = self._reject_reply()
            summary = self._summary(Outcome.REJECTED, reply.text)
            self._reset_envelope()
            if self.state is State.RCPT:
                self.state = State.MAIL
            return [SendClient(reply), SendUpstream(b"RSET\r\n", Purpose.RSET), summary]
        if self.policy.skip_authenticated and self.authenticated:
            return [SendUpstream(b"DATA\r\n", Purpose.SKIP_DATA)]
        if self.envelope.sender is None:
            return [SendClient(NEED_MAIL)]
        if not self.envelope.recipients:
            return [SendClient(NO_VALID_RECIPIENTS)]
        self.state = State.DATA
        return [SendClient(START_MAIL_INPUT), ReceiveMessage(stream=False)]

    def _too_many_recipients(self) -> bool:
        """MaxRecipients: the envelope (kept in memory) never grows past it."""
        limit = self.policy.max_recipients
        return bool(limit) and len(self.envelope.recipients) >= limit

    def _count_errors(self, actions: list[Action]) -> list[Action]:
        """HardErrorLimit: count error replies to the client (ours and the upstream's; not
        452 Too many recipients, an ordinary answer to a long pipelined list); at the
        limit, 421 and close.  A delivered message resets the count (_finish_message)."""
        limit = self.policy.hard_error_limit
        if not limit or any(isinstance(action, Close) for action in actions):
            return actions
        for action in actions:
            if (
                isinstance(action, SendClient)
                and action.reply.code >= 400
                and action.reply is not TOO_MANY_RECIPIENTS
                and action.reply is not TOO_MANY_ERRORS
            ):
                self.errors += 1
                if self.errors >= limit:
                    note = Log(logging.WARNING, f"{self.errors} errors: disconnecting the client")
                    return [*actions, note, SendClient(TOO_MANY_ERRORS), Close()]
        return actions

    def _declared_too_big(self, command: Command) -> bool:
        limit = self.policy.max_message_size
        if not limit:
            return False
        for param in command.params:
            name, _, value = param.partition("=")
            if name.upper() == "SIZE" and value.isascii() and value.isdigit():
                return int(value) > limit
        return False

    def _starttls(self, command: Command) -> list[Action]:
        """Answered here (the next server never hears of it); RFC 3207 section 4."""
        if self.tls:
            return [SendClient(TLS_ALREADY_ACTIVE)]
        if command.argument.strip():
            return [SendClient(TLS_NO_PARAMETERS)]
        if self.state is State.RCPT:
            return [SendClient(TLS_IN_TRANSACTION)]
        return [SendClient(READY_TO_START_TLS), StartTLS()]

    @_input
    def tls_started(self) -> None:
        """The handshake is done: forget the client's HELO and envelope; it says EHLO again."""
        self.tls = True
        self._reset_envelope()
        self.state = State.HELO
        self.helo_line = self.helo_name = None

    def _rejecting(self) -> bool:
        if self.policy.reject is None:
            return False
        return not (self.policy.skip_authenticated and self.authenticated)

    def _reject_reply(self) -> Reply:
        assert self.policy.reject is not None
        return self.policy.reject

    # -- replies ------------------------------------------------------------------------

    def _reply_to_line(self, action: SendUpstream, reply: Reply) -> list[Action]:
        purpose = action.purpose
        if purpose is Purpose.XCLIENT:
            self._expect(*_COMMAND_STATES)
            assert action.command is not None
            if not reply.is_positive:
                warning = Log(logging.WARNING, f"server didn't accept XCLIENT: {reply.text}")
                return [warning, *self._dispatch(action.command)]
            assert self.helo_line is not None  # XCLIENT is only armed after HELO/EHLO
            # Postfix answers XCLIENT with a new greeting: say HELO/EHLO again (B20).
            return [SendUpstream(self.helo_line, Purpose.XCLIENT_HELO, action.command)]
        if purpose is Purpose.XCLIENT_HELO:
            self._expect(*_COMMAND_STATES)
            assert action.command is not None
            if not reply.is_positive:
                return [
                    Log(logging.WARNING, f"server refused HELO after XCLIENT: {reply.text}"),
                    *self._dispatch(action.command),
                ]
            return self._dispatch(action.command)
        if purpose is Purpose.RSET:
            if not reply.is_positive:
                return [Log(logging.WARNING, f"server refused RSET: {reply.text}")]
            return []
        if purpose is Purpose.DATA:
            self._expect(State.REPLAY)
            if reply.code == 354:
                return [SendMessage()]
            # The upstream refused our DATA: that is the message's final reply (B15: logged).
            return self._finish_message(reply, self._filter_outcome(), rset=True)
        if purpose is Purpose.SKIP_DATA:
            self._expect(*_COMMAND_STATES)
            if reply.code == 354:
                self.state = State.DATA
                return [SendClient(reply), ReceiveMessage(stream=True)]
            return [SendClient(reply)]
        if purpose is Purpose.AUTH_CONTINUATION:
            self._expect(*_COMMAND_STATES)
            return self._after_auth_reply(reply)
        assert action.command is not None
        return self._after_command_reply(action.command, reply)

    def _after_command_reply(self, command: Command, reply: Reply) -> list[Action]:
        self._expect(*_COMMAND_STATES)
        verb = command.verb
        actions: list[Action] = []
        if verb is Verb.QUIT:
            self.state = State.QUIT
            return [SendClient(reply), Close()]
        if verb is Verb.AUTH:
            self._auth_started = True
            return self._after_auth_reply(reply)
        if reply.code == 235:
            actions.append(Log(logging.WARNING, "Authentication success code without AUTH"))
        if not reply.is_positive:
            actions.append(SendClient(reply))
            return actions
        self.state = _AFTER_POSITIVE.get(verb, self.state)
        if verb in (Verb.EHLO, Verb.HELO):
            self._reset_envelope()
            self.helo_line = command.line
            self.helo_name = command.argument.split(None, 1)[0] if command.argument else ""
            if verb is Verb.EHLO:
                self.extensions = parse_extensions(reply)
                self._xclient_supported = self._xclient_supported or self.extensions.has("XCLIENT")
                reply = rewrite_ehlo_reply(reply)
                if self.policy.max_message_size:
                    reply = advertise(reply, f"SIZE {self.size_limit}")
                if self.policy.starttls and not self.tls:
                    reply = advertise(reply, "STARTTLS")
                if self.policy.pipelining:
                    # Ours, whatever the upstream says: every buffered command waits its turn
                    # and gets its own reply (B1); the upstream side stays lock-step.
                    reply = advertise(reply, "PIPELINING")
            else:
                self._xclient_supported = True  # assumed for HELO (docs/behaviour.md §4.5)
                reply = rewrite_helo_reply(reply)
        elif verb is Verb.MAIL:
            self._reset_envelope(keep_xforward=True)
            self.envelope.sender = _mailbox(command, "FROM")
        elif verb is Verb.RCPT:
            if self.state is State.RCPT:
                self.envelope.recipients.append(_mailbox(command, "TO"))
        elif verb is Verb.RSET:
            self._reset_envelope()
            if self.state is State.RCPT:
                self.state = State.MAIL
        elif verb is Verb.XFORWARD:
            for name, value in command.attributes:
                if name == "ADDR":
                    self.envelope.remote_addr = xforward_value(value)
                elif name == "HELO":
                    self.envelope.remote_helo = xforward_value(value)
        actions.append(SendClient(reply))
        return actions

    def _after_auth_reply(self, reply: Reply) -> list[Action]:
        self._in_auth = reply.code == 334
        if reply.code == 235 and self._auth_started:
            self.authenticated = True
        return [SendClient(reply)]

    # -- the end of a message -----------------------------------------------------------

    def _filter_outcome(self) -> Outcome:
        return Outcome.FILTERED if self.policy.filtering else Outcome.PASSED

    def _finish_message(
        self, reply: Reply, outcome: Outcome, *, rset: bool = False
    ) -> list[Action]:
        """The upstream answered the message (or refused its DATA): its reply is the
        client's."""
        summary = self._summary(outcome, None, upstream=reply.text)
        if reply.is_positive:
            self.errors = 0  # HardErrorLimit counts errors between delivered messages
        self._end_transaction()
        actions: list[Action] = [SendClient(reply)]
        if rset:
            actions.append(SendUpstream(b"RSET\r\n", Purpose.RSET))
        actions.append(summary)
        return actions

    def _abandon_message(self, reply: Reply, outcome: Outcome, detail: str) -> list[Action]:
        """The message is not delivered: tell the client, reset the upstream's transaction."""
        text = reply.text if outcome in (Outcome.REJECTED, Outcome.DROPPED) else detail
        summary = self._summary(outcome, text or None)
        self._end_transaction()
        return [SendClient(reply), SendUpstream(b"RSET\r\n", Purpose.RSET), summary]

    def _end_transaction(self) -> None:
        self.messages += 1
        self._reset_envelope()
        self.state = State.MAIL

    def _summary(
        self, outcome: Outcome, reason: str | None, *, upstream: str | None = None
    ) -> Summary:
        parts = [f"client={self.policy.client}"]
        if self.envelope.sender is not None:
            parts.append(f"from={self.envelope.sender}")
        parts.extend(f"to={rcpt}" for rcpt in self.envelope.recipients)
        if outcome is not Outcome.PASSED:
            parts.append(f"status={outcome.value}")
        if reason:
            parts.append(f"reason={reason}")
        if upstream is not None:
            parts.append(f"upstream={upstream}")
        return Summary(", ".join(parts), outcome)

    # -- helpers ------------------------------------------------------------------------

    def _reset_envelope(self, keep_xforward: bool = False) -> None:
        remote = (self.envelope.remote_addr, self.envelope.remote_helo)
        self.envelope = Envelope()
        if keep_xforward:
            self.envelope.remote_addr, self.envelope.remote_helo = remote

    def _xclient_armed(self) -> bool:
        return (
            self.policy.xclient
            and self._xclient_supported
            and not self._xclient_sent
            and self.helo_line is not None
        )

    def _xclient_line(self) -> bytes:
        addr = self.policy.client
        if self.policy.client_is_ipv6 and addr:
            addr = "IPv6:" + addr
        parts = [f"ADDR={xtext_encode(addr) if addr else '[UNAVAILABLE]'}"]
        if self.policy.xclient_name:
            parts.append(f"NAME={xtext_encode(self.policy.xclient_name)}")
        if self.helo_name:
            parts.append(f"HELO={xtext_encode(self.helo_name)}")
        return ("XCLIENT " + " ".join(parts) + "\r\n").encode("ascii")

    def _emit(self, actions: list[Action]) -> list[Action]:
        """Queue the actions that expect an upstream reply; the relay performs them in
        order, so their replies arrive in this order."""
        for action in actions:
            if isinstance(action, SendUpstream | SendMessage) or (
                isinstance(action, ReceiveMessage) and action.stream
            ):
                self._pending.append(action)
        return self._count_errors(actions)

    @contextmanager
    def _sticky(self) -> Iterator[None]:
        """Once an input was illegal the session is broken: every later input fails too."""
        if self._error is not None:
            raise LocalProtocolError(f"session already failed: {self._error}")
        try:
            yield
        except LocalProtocolError as exc:
            self._error = exc
            raise

    def _expect(self, *states: State) -> None:
        if self.state not in states:
            allowed = ", ".join(state.value for state in states)
            raise LocalProtocolError(f"event illegal in state {self.state.value} ({allowed})")


def _mailbox(command: Command, keyword: str) -> str:
    """The recorded envelope address: parsed mailbox, else the raw argument
    (docs/behaviour.md §4.6)."""
    if command.address is not None:
        return command.address
    argument = command.argument
    if argument[: len(keyword)].upper() == keyword:
        argument = argument[len(keyword) :]
    return argument.lstrip(" \t:").strip()


def _bdat_size(command: Command) -> int:
    words = command.argument.split()
    if words and words[0].isascii() and words[0].isdigit():
        return int(words[0])
    return 0
