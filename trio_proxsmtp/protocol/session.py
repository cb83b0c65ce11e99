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
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar, cast

import attrs

from trio_proxsmtp.protocol.actions import (
    AbortMilters,
    Action,
    AskMilters,
    Close,
    Log,
    Outcome,
    Purpose,
    ReceiveChunk,
    ReceiveMessage,
    RunFilter,
    RunMilters,
    SendClient,
    SendMessage,
    SendUpstream,
    SkipBytes,
    StartTLS,
    StartUpstreamTLS,
    Summary,
)
from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.milter.messages import MilterVerdictKind
from trio_proxsmtp.protocol.smtp.bdat import SYNTAX_REPLY as BDAT_SYNTAX
from trio_proxsmtp.protocol.smtp.bdat import BdatSyntaxError, parse_bdat
from trio_proxsmtp.protocol.smtp.commands import (
    BAD_CHARACTER,
    Command,
    Verb,
    parse_command,
    xforward_value,
    xtext_encode,
)
from trio_proxsmtp.protocol.smtp.ehlo import (
    Extensions,
    advertise,
    parse_extensions,
    rewrite_banner,
    rewrite_ehlo_reply,
    rewrite_helo_reply,
)
from trio_proxsmtp.protocol.smtp.replies import LOCAL_ERROR, Reply
from trio_proxsmtp.protocol.summary import Delays, MessageSummary, Status, refusal_status

__all__ = [
    "LOCAL_ERROR",
    "AbortMilters",
    "Action",
    "AskMilters",
    "ChangedEnvelope",
    "Close",
    "Envelope",
    "Log",
    "MessageFacts",
    "Outcome",
    "Purpose",
    "ReceiveChunk",
    "ReceiveMessage",
    "RunFilter",
    "RunMilters",
    "SendClient",
    "SendMessage",
    "SendUpstream",
    "Session",
    "SessionPolicy",
    "SkipBytes",
    "StartTLS",
    "StartUpstreamTLS",
    "State",
    "Status",
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
# A milter's DISCARD: the client is told the message was taken, as Postfix does.
MILTER_DISCARDED = Reply.single(250, "2.0.0 Ok")
# OutTLS (docs/behaviour.md §11): no mail goes to the next server in plain text under encrypt.
UPSTREAM_TLS_UNAVAILABLE = Reply.single(
    421, "4.7.0 smtp.passthru Error: TLS to the next server unavailable"
)
NEED_HELO = Reply.single(503, "5.5.1 Error: send HELO/EHLO first")
AUTH_NEEDS_ENCRYPTION = Reply.single(
    538, "5.7.11 Encryption required for requested authentication mechanism"
)
# CHUNKING (RFC 3030) from the client, Chunking: on.
BDAT_IN_PROGRESS = Reply.single(503, "5.5.1 Error: BDAT transfer in progress (RSET to abandon)")
NOOP_OK = Reply.single(250, "2.0.0 Ok")
# Limits on hostile clients (docs/behaviour.md, "Limits"); never forwarded.
TOO_MANY_RECIPIENTS = Reply.single(452, "4.5.3 Too many recipients")
TOO_MANY_ERRORS = Reply.single(421, "4.7.0 Error: too many errors")


class State(enum.Enum):
    GREETING = "greeting"  # waiting for the upstream's banner
    HELO = "helo"  # banner relayed; no HELO/EHLO accepted yet
    MAIL = "mail"  # ready for a transaction
    RCPT = "rcpt"  # sender accepted; recipients may follow
    DATA = "data"  # the client is sending its message
    CHUNKS = "chunks"  # BDAT chunks came, the LAST not yet: commands between chunks
    FILTERING = "filtering"  # the message is spooled; the filter runs
    MILTERING = "miltering"  # the milters have the (filtered) message
    REPLAY = "replay"  # our DATA, the message and its final reply, upstream
    QUIT = "quit"  # QUIT answered; the connection closes


# States in which a client command line may arrive.
_COMMAND_STATES = frozenset({State.HELO, State.MAIL, State.RCPT})
# Actions whose upstream reply the session waits for (a streamed message is the third).
_AWAITS_REPLY = (SendUpstream, SendMessage)
# States in which a message is on its way.
_MESSAGE_STATES = frozenset(
    {State.DATA, State.CHUNKS, State.FILTERING, State.MILTERING, State.REPLAY}
)

# Where each input of the relay is legal; anything else is our bug (LocalProtocolError).
_LEGAL: dict[str, frozenset[State]] = {
    "greeting": frozenset({State.GREETING}),
    "line_too_long": _COMMAND_STATES | {State.CHUNKS},
    "bad_command_line": _COMMAND_STATES | {State.CHUNKS},
    "command": _COMMAND_STATES | {State.CHUNKS},
    "message_received": frozenset({State.DATA}),
    "message_failed": frozenset({State.DATA, State.CHUNKS}),
    "message_streamed": frozenset({State.DATA}),
    "chunk_received": frozenset({State.CHUNKS}),
    "filter_done": frozenset({State.FILTERING}),
    "tls_started": _COMMAND_STATES,
    "milters_decided": _COMMAND_STATES,
    "milters_done": frozenset({State.MILTERING}),
    "upstream_tls_started": _COMMAND_STATES,
}
# The client commands the milters are asked about before they go any further.
_MILTER_VERBS = frozenset({Verb.HELO, Verb.EHLO, Verb.MAIL, Verb.RCPT, Verb.DATA})

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
    return _guarded(method, _LEGAL[method.__name__])


def _reply_input(
    method: Callable[Concatenate[Session, _P], _R],
) -> Callable[Concatenate[Session, _P], _R]:
    """An upstream reply: as `_input`, but legal in any state (it answers what is pending)."""
    return _guarded(method, None)


def _guarded(
    method: Callable[Concatenate[Session, _P], _R], legal: frozenset[State] | None
) -> Callable[Concatenate[Session, _P], _R]:
    def wrapper(self: Session, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._error is not None:
            raise LocalProtocolError(f"session already failed: {self._error}")
        try:
            if legal is not None and self.state not in legal:
                self._expect(*legal)
            result = method(self, *args, **kwargs)
            if isinstance(result, list):
                # _emit's list, not `result`: HardErrorLimit may add its 421 and Close.
                return cast(_R, self._emit(result))
            return result
        except LocalProtocolError as exc:
            self._error = exc  # once an input was illegal, every later one fails too
            raise

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
    milters: bool = False  # Milters are configured: ask them at each stage
    filter_name: str = "filter"  # FilterCommand's program, for the summary's filter=
    upstream_starttls: bool = False  # OutTLS may/encrypt: STARTTLS to the next server
    upstream_tls_required: bool = False  # OutTLS encrypt: no plain-text fallback
    chunking: bool = False  # Chunking: on: advertise CHUNKING and take BDAT
    max_recipients: int = 0  # MaxRecipients: accepted recipients per transaction; 0: none
    hard_error_limit: int = 0  # HardErrorLimit: error replies before 421 and close; 0: none


@attrs.define
class Envelope:
    """What the upstream accepted for the current transaction (docs/behaviour.md §4.2, §6.1)."""

    sender: str | None = None
    recipients: list[str] = attrs.field(factory=list)
    remote_addr: str | None = None  # from an accepted XFORWARD ADDR=
    remote_helo: str | None = None  # from an accepted XFORWARD HELO=
    sender_params: tuple[str, ...] = ()  # MAIL's ESMTP parameters (kept for the milters)
    recipient_params: list[tuple[str, ...]] = attrs.field(factory=list)  # each RCPT's


@attrs.frozen
class ChangedEnvelope:
    """The envelope as the milters left it: the upstream transaction is made again with it."""

    sender: str  # without angle brackets; "" is the null sender
    sender_params: tuple[str, ...]
    recipients: tuple[tuple[str, tuple[str, ...]], ...]  # (address, ESMTP parameters)


@attrs.define
class MessageFacts:
    """What the summary line says about the current message beyond its envelope: its size
    and the seconds each stage took, as the relay measured them (the session keeps no
    clock: durations come in with the inputs that end each stage)."""

    size: int | None = None
    receive: float = 0.0
    filter: float = 0.0
    upstream: float = 0.0

    @property
    def delays(self) -> Delays:
        return Delays(self.receive, self.filter, self.upstream)


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
        self.tls = False  # the client connection is TLS (after STARTTLS, or ListenTLS)
        self.upstream_tls = False  # the next server's connection is TLS
        self._upstream_tls_tried = False  # OutTLS may/encrypt: the upgrade was attempted
        self._plain_ehlo: Reply | None = None  # the next server's EHLO reply before TLS
        self._bdat_message = False  # the current message came by BDAT
        self.relay: str | None = None  # the upstream's address, for the summary's relay=
        self.facts = MessageFacts()  # the current message's size and stage durations
        # Exchanges sent upstream, oldest first: each upstream reply answers the head.
        self._pending: collections.deque[Action] = collections.deque()
        self._error: LocalProtocolError | None = None  # sticky: set once, refuses all
        # Milters: the command they let through (dispatched once more, without asking),
        # who decided the message's fate (summary), and the envelope replay's state.
        self._milter_passed: Command | None = None
        self._decided_by: str | None = None
        self._replay_lines: collections.deque[bytes] = collections.deque()
        self._replay_accepted = 0
        self._replay_refusal: Reply | None = None
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
    def greeting(self, reply: Reply, *, relay: str | None = None) -> list[Action]:
        """The upstream's banner; `relay` is the address the relay connected to."""
        self.relay = relay
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

    @_reply_input
    def upstream_reply(self, reply: Reply, *, seconds: float = 0.0) -> list[Action]:
        """The upstream's next complete reply: it answers the oldest exchange pending.

        `seconds`: how long that exchange took (sending the message included); the ones
        of the message's DATA and final "." are its upstream delay.
        """
        if not self._pending:
            raise LocalProtocolError("no upstream reply expected")
        return self._reply(self._pending.popleft(), reply, seconds)

    @_reply_input
    def reply(self, action: Action, reply: Reply, *, seconds: float = 0.0) -> list[Action]:
        """The upstream's complete reply to `action`, which must be the oldest pending."""
        if not self._pending or self._pending[0] != action:
            raise LocalProtocolError(f"no upstream reply expected for {action!r}")
        return self._reply(self._pending.popleft(), reply, seconds)

    @property
    def pending(self) -> tuple[Action, ...]:
        """The exchanges sent upstream and not yet answered, oldest first."""
        return tuple(self._pending)

    def _reply(self, action: Action, reply: Reply, seconds: float) -> list[Action]:
        if _carries_message(action):
            self.facts.upstream += seconds
        if isinstance(action, SendUpstream):
            return self._reply_to_line(action, reply)
        if isinstance(action, SendMessage):
            self._expect(State.REPLAY)
            # A refused BDAT chunk leaves the next server's transaction open: reset it.
            rset = action.bdat and not reply.is_positive
            return self._finish_message(reply, self._filter_outcome(), rset=rset)
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
    def message_received(self, size: int, *, seconds: float = 0.0) -> list[Action]:
        """The client's message is spooled (`size` bytes, un-stuffed, read in `seconds`)."""
        return self._received(size, seconds)

    def _received(self, size: int, seconds: float) -> list[Action]:
        self.facts.size, self.facts.receive = size, seconds
        limit = self.size_limit
        if limit is not None and size > limit:
            return self._abandon_message(MESSAGE_TOO_BIG, Outcome.TOO_BIG, f"size {size}")
        if self.policy.filtering and not self._filter_skipped():
            self.state = State.FILTERING
            return [RunFilter()]
        if self.policy.milters:
            self.state = State.MILTERING
            return [RunMilters()]
        self.state = State.REPLAY
        return self._replay()

    def _replay(self) -> list[Action]:
        """Send the accepted message: as BDAT when it came by BDAT and the next server
        offers CHUNKING (no DATA exchange), else DATA, its 354, then the message."""
        if self._bdat_message and self.extensions.has("CHUNKING"):
            return [SendMessage(bdat=True)]
        return [SendUpstream(b"DATA\r\n", Purpose.DATA)]

    @_input
    def message_failed(
        self, reply: Reply, detail: str, *, size: int | None = None, seconds: float = 0.0
    ) -> list[Action]:
        """The message could not be spooled (disk full...); it was still read to its end."""
        self.facts.size, self.facts.receive = size, seconds
        return self._abandon_message(reply, Outcome.FILTER_ERROR, detail)

    @_input
    def message_streamed(self, size: int, *, seconds: float = 0.0) -> list[Action]:
        """Skip mode: the client's message went upstream as it came (`size` bytes, read in
        `seconds`); the upstream's reply to it follows as `upstream_reply`."""
        if not self._pending or self._pending[0] != ReceiveMessage(stream=True):
            raise LocalProtocolError("no message is being streamed")
        self.facts.size, self.facts.receive = size, seconds
        return []

    @_input
    def filter_done(
        self,
        accepted: bool,
        reply: Reply | None,
        outcome: Outcome,
        detail: str = "",
        *,
        seconds: float = 0.0,
    ) -> list[Action]:
        """The filter's verdict: accepted -> replay; otherwise `reply` goes to the client.

        A refusal (REJECTED or DEFERRED) is logged by its reply's code: 4xx DEFERRED, 5xx
        REJECTED. `seconds`: how long the filter ran.
        """
        self.facts.filter = seconds
        if accepted and self.policy.milters:
            self.state = State.MILTERING  # FilterCommand first, then the milters
            return [RunMilters()]
        if accepted:
            self.state = State.REPLAY
            return self._replay()
        if reply is None:
            raise LocalProtocolError("a rejected message needs a reply")
        if self.policy.milters:
            self._decided_by = f"filter={self.policy.filter_name}"
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
        if self.state is State.CHUNKS:
            return self._between_chunks(command)
        if verb is Verb.BDAT and self.policy.chunking:
            return self._bdat(command)
        if verb in (Verb.EHLO, Verb.HELO) and self._upstream_tls_due():
            return self._upgrade_upstream(command)
        if verb is Verb.AUTH and self.tls and not self.upstream_tls:
            # Credentials the client sent encrypted never cross a plain-text hop.
            return [
                Log(logging.WARNING, "refused AUTH: the client used TLS, the next server not"),
                SendClient(AUTH_NEEDS_ENCRYPTION),
            ]
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
            return self._data(command)
        if self._ask_milters(command):
            return [AskMilters(command)]
        if verb is Verb.RSET and self.policy.milters:
            return [AbortMilters(), SendUpstream(command.line, Purpose.COMMAND, command)]
        if (
            self.policy.upstream_tls_required
            and not self.upstream_tls
            and verb not in (Verb.QUIT, Verb.NOOP, Verb.RSET)
        ):
            # OutTLS: encrypt: nothing of the client's goes upstream before TLS is up.
            return [SendClient(NEED_HELO)]
        return [SendUpstream(command.line, Purpose.COMMAND, command)]

    def pipelinable(self, command: Command) -> bool:
        """Whether `command` may join a group sent upstream in one write before the replies
        to the group's earlier commands (RFC 2920): a MAIL or RCPT the session would
        forward as is, to a next server that offers PIPELINING.  DATA never joins: it is
        answered by us once the replies to MAIL and RCPT are in (docs/behaviour.md §11)."""
        if command.verb not in (Verb.MAIL, Verb.RCPT) or self._error is not None:
            return False
        if self.policy.milters:
            return False  # the milters answer each MAIL and RCPT before it goes upstream
        return (
            self.extensions.has("PIPELINING")
            and self.state in (State.MAIL, State.RCPT)
            and not self._in_auth
            and not self._xclient_armed()
            and not self._rejecting()
            and not (self.policy.upstream_tls_required and not self.upstream_tls)
            and not (command.verb is Verb.MAIL and self._declared_too_big(command))
            and not (command.verb is Verb.RCPT and self._too_many_recipients())
        )

    # -- TLS to the next server (OutTLS may/encrypt) --------------------------------------

    def _upstream_tls_due(self) -> bool:
        policy = self.policy
        return policy.upstream_starttls and not self.upstream_tls and not self._upstream_tls_tried

    def _upgrade_upstream(self, command: Command) -> list[Action]:
        """The client's first HELO/EHLO: first our own EHLO (an EHLO even for a HELO), to
        learn whether the next server offers STARTTLS (RFC 3207)."""
        self._upstream_tls_tried = True
        if command.verb is Verb.EHLO:
            line = command.line
        else:
            name = command.argument.split(None, 1)[0] if command.argument.strip() else ""
            line = f"EHLO {name or 'smtp.passthru'}\r\n".encode("utf-8", "surrogateescape")
        return [SendUpstream(line, Purpose.UPSTREAM_EHLO, command)]

    def _after_upstream_ehlo(self, command: Command, reply: Reply) -> list[Action]:
        self._expect(*_COMMAND_STATES)
        if reply.is_positive and parse_extensions(reply).has("STARTTLS"):
            self._plain_ehlo = reply
            return [SendUpstream(b"STARTTLS\r\n", Purpose.UPSTREAM_STARTTLS, command)]
        why = "doesn't offer STARTTLS" if reply.is_positive else f"refused EHLO: {reply.text}"
        return self._no_upstream_tls(command, reply, f"next server {why}")

    def _after_upstream_starttls(self, command: Command, reply: Reply) -> list[Action]:
        self._expect(*_COMMAND_STATES)
        if reply.code == 220:
            return [StartUpstreamTLS(command)]
        assert self._plain_ehlo is not None
        plain, self._plain_ehlo = self._plain_ehlo, None
        return self._no_upstream_tls(command, plain, f"next server refused STARTTLS: {reply.text}")

    def _no_upstream_tls(self, command: Command, ehlo_reply: Reply, why: str) -> list[Action]:
        """No TLS to the next server: under encrypt the client gets 421 and nothing goes
        upstream; under may the session goes on in plain text (the EHLO reply we got is
        the client's, a HELO is sent as the client said it)."""
        if self.policy.upstream_tls_required:
            return [
                Log(logging.ERROR, f"TLS required (OutTLS: encrypt): {why}"),
                SendClient(UPSTREAM_TLS_UNAVAILABLE),
                Close(),
            ]
        log = Log(logging.INFO, f"plain text to the next server (OutTLS: may): {why}")
        if command.verb is Verb.EHLO:
            return [log, *self._after_command_reply(command, ehlo_reply)]
        return [log, *self._dispatch(command)]

    @_input
    def upstream_tls_started(self, command: Command) -> list[Action]:
        """The TLS handshake with the next server is done: the client's HELO/EHLO goes
        over it, and its reply (the new extensions) is the client's."""
        self.upstream_tls = True
        self._plain_ehlo = None
        self.extensions = Extensions(frozenset(), None)
        return self._dispatch(command)

    # -- CHUNKING from the client (Chunking: on) -----------------------------------------

    def _bdat(self, command: Command) -> list[Action]:
        """The first BDAT of a message (RFC 3030): its chunks are spooled like a DATA
        message; the filter runs at LAST."""
        try:
            bdat = parse_bdat(command.argument)
        except BdatSyntaxError as exc:
            return self._bdat_syntax_error(str(exc))
        if self.envelope.sender is None or not self.envelope.recipients:
            # The chunk is read and dropped, never taken for commands.
            reply = NEED_MAIL if self.envelope.sender is None else NO_VALID_RECIPIENTS
            return [SkipBytes(bdat.size), SendClient(reply)]
        self.state = State.CHUNKS
        self._bdat_message = True
        self.facts = MessageFacts()
        return [ReceiveChunk(bdat.size, bdat.last)]

    def _between_chunks(self, command: Command) -> list[Action]:
        verb = command.verb
        if verb is Verb.BDAT:
            try:
                bdat = parse_bdat(command.argument)
            except BdatSyntaxError as exc:
                return self._bdat_syntax_error(str(exc))
            return [ReceiveChunk(bdat.size, bdat.last)]
        if verb is Verb.NOOP:
            return [SendClient(NOOP_OK)]
        if verb in (Verb.RSET, Verb.QUIT):
            # The message is abandoned: nothing went upstream yet; its spool goes with the
            # reply (the connection closes it once no message is on its way).
            self._end_transaction(count=False)
            return self._dispatch(command)
        return [SendClient(BDAT_IN_PROGRESS)]

    def _bdat_syntax_error(self, detail: str) -> list[Action]:
        """The chunk's end is unknown: the stream cannot be resynchronised (RFC 3030 §3)."""
        actions: list[Action] = [Log(logging.WARNING, detail)]
        if self.in_message:
            actions.append(self._summary(Outcome.FILTER_ERROR, "BDAT syntax error"))
            self._end_transaction()
        return [*actions, SendClient(BDAT_SYNTAX), Close()]

    @_input
    def chunk_received(
        self, size: int, last: bool, total: int, *, seconds: float = 0.0
    ) -> list[Action]:
        """A BDAT chunk of `size` bytes is spooled (`total` so far, `seconds` since the
        first chunk began); each chunk but the LAST gets its 250 here; at LAST the message
        goes on as a DATA message does."""
        if not last:
            self.facts.size, self.facts.receive = total, seconds
            return [SendClient(Reply.single(250, f"2.0.0 {size} octets received"))]
        self.state = State.DATA
        return self._received(total, seconds)

    def _data(self, command: Command) -> list[Action]:
        if self._rejecting():
            # Nothing reaches the upstream; its transaction (if any) is reset.
            reply = self._reject_reply()
            self.facts = MessageFacts()
            summary = self._summary(refusal_status(reply.code), reply.text)
            self._reset_envelope()
            if self.state is State.RCPT:
                self.state = State.MAIL
            return [SendClient(reply), SendUpstream(b"RSET\r\n", Purpose.RSET), summary]
        if self.policy.skip_authenticated and self.authenticated and not self.policy.milters:
            return [SendUpstream(b"DATA\r\n", Purpose.SKIP_DATA)]
        if self.envelope.sender is None:
            return [SendClient(NEED_MAIL)]
        if not self.envelope.recipients:
            return [SendClient(NO_VALID_RECIPIENTS)]
        if self._ask_milters(command):
            return [AskMilters(command)]
        self.state = State.DATA
        self.facts = MessageFacts()
        return [SendClient(START_MAIL_INPUT), ReceiveMessage(stream=False)]

    def _too_many_recipients(self) -> bool:
        """MaxRecipients: the envelope (kept in memory) never grows past it."""
        limit = self.policy.max_recipients
        if not limit:
            return False
        accepted = len(self.envelope.recipients)
        if not self._pending:  # lock-step: nothing in flight
            return accepted >= limit
        # RCPTs sent upstream in a pipelined group and not yet answered count too.
        in_flight = sum(
            1
            for action in self._pending
            if isinstance(action, SendUpstream)
            and action.command is not None
            and action.command.verb is Verb.RCPT
        )
        return accepted + in_flight >= limit

    def _count_errors(self, actions: list[Action]) -> list[Action]:
        """HardErrorLimit: count error replies to the client (ours and the upstream's; not
        452 Too many recipients, an ordinary answer to a long pipelined list); at the
        limit, 421 and close.  A delivered message resets the count (_finish_message)."""
        limit = self.policy.hard_error_limit
        if not limit:
            return actions
        errors = 0
        for action in actions:
            if isinstance(action, SendClient):
                reply = action.reply
                if reply.code < 400 or reply is TOO_MANY_RECIPIENTS or reply is TOO_MANY_ERRORS:
                    continue
                errors += 1
            elif isinstance(action, Close):
                return actions  # closing anyway: nothing to count
        for _ in range(errors):
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
                self.facts = MessageFacts()
                return [SendClient(reply), ReceiveMessage(stream=True)]
            return [SendClient(reply)]
        if purpose is Purpose.AUTH_CONTINUATION:
            self._expect(*_COMMAND_STATES)
            return self._after_auth_reply(reply)
        if purpose is Purpose.REPLAY_ENVELOPE:
            return self._replay_envelope_reply(action, reply)
        if purpose is Purpose.UPSTREAM_EHLO:
            assert action.command is not None
            return self._after_upstream_ehlo(action.command, reply)
        if purpose is Purpose.UPSTREAM_STARTTLS:
            assert action.command is not None
            return self._after_upstream_starttls(action.command, reply)
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
            if verb is Verb.MAIL and self.policy.milters:
                actions.append(AbortMilters())  # the milters saw a MAIL that did not happen
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
                if self.policy.chunking:
                    reply = advertise(reply, "CHUNKING")  # never BINARYMIME
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
            self.envelope.sender_params = command.params
        elif verb is Verb.RCPT:
            if self.state is State.RCPT:
                self.envelope.recipients.append(_mailbox(command, "TO"))
                self.envelope.recipient_params.append(command.params)
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
        if self.policy.milters and self._filter_skipped():
            return Outcome.SKIPPED  # Skip: authenticated skipped FilterCommand, not the milters
        if self.policy.milters:
            return Outcome.FILTERED
        return Outcome.FILTERED if self.policy.filtering else Outcome.PASSED

    def _finish_message(
        self, reply: Reply, outcome: Outcome, *, rset: bool = False
    ) -> list[Action]:
        """The upstream answered the message (or refused its DATA): its reply is the
        client's."""
        summary = self._summary(outcome, None, upstream=reply)
        if reply.is_positive:
            self.errors = 0  # HardErrorLimit counts errors between delivered messages
        self._end_transaction()
        actions: list[Action] = [AbortMilters()] if self.policy.milters else []
        actions.append(SendClient(reply))
        if rset:
            actions.append(SendUpstream(b"RSET\r\n", Purpose.RSET))
        actions.append(summary)
        return actions

    def _abandon_message(self, reply: Reply, outcome: Outcome, detail: str) -> list[Action]:
        """The message is not delivered: tell the client, reset the upstream's transaction."""
        if outcome in (Status.REJECTED, Status.DEFERRED):
            outcome = refusal_status(reply.code)
        text = reply.text if outcome in _REFUSED_BY_REPLY else detail
        summary = self._summary(outcome, text or None)
        self._end_transaction()
        actions: list[Action] = [AbortMilters()] if self.policy.milters else []
        return [*actions, SendClient(reply), SendUpstream(b"RSET\r\n", Purpose.RSET), summary]

    def _end_transaction(self, count: bool = True) -> None:
        if count:
            self.messages += 1
        self._reset_envelope()
        self._bdat_message = False
        self.state = State.MAIL

    def _summary(
        self, outcome: Outcome, reason: str | None, *, upstream: Reply | None = None
    ) -> Summary:
        """The message's one summary line; relay= only once the upstream answered it."""
        message = MessageSummary(
            client=self.policy.client,
            status=outcome,
            sender=self.envelope.sender,
            recipients=tuple(self.envelope.recipients),
            reason=reason,
            upstream=None if upstream is None else upstream.text,
            relay=None if upstream is None else self.relay,
            size=self.facts.size,
            delays=self.facts.delays,
            decided_by=self._decided_by,
        )
        self._decided_by = None
        return Summary(message, None if upstream is None else upstream.code)

    # -- milters ------------------------------------------------------------------------

    def _ask_milters(self, command: Command) -> bool:
        """Whether this command goes to the milters first (once: not when they passed it)."""
        if not self.policy.milters or command.verb not in _MILTER_VERBS:
            return False
        if self._milter_passed is command:
            self._milter_passed = None
            return False
        return True

    def _filter_skipped(self) -> bool:
        """Skip: authenticated skips FilterCommand only; the milters still see the message."""
        return self.policy.skip_authenticated and self.authenticated

    @_input
    def milters_decided(
        self, action: AskMilters, kind: MilterVerdictKind, reply: Reply | None, milter: str | None
    ) -> list[Action]:
        """The milters' answer to a client command: it goes on, or `reply` answers it."""
        command = action.command
        if kind in (
            MilterVerdictKind.CONTINUE,
            MilterVerdictKind.ACCEPT,
            MilterVerdictKind.DISCARD,
        ):
            self._milter_passed = command
            return self._dispatch(command)
        if reply is None:
            raise LocalProtocolError("a refusal by a milter needs a reply")
        log = Log(logging.INFO, f"milter {milter} refused {command.verb.value}: {reply.text}")
        if command.verb is not Verb.DATA:
            return [log, SendClient(reply)]
        # At DATA the transaction is over: the upstream's is reset, the summary says why.
        self._decided_by = f"milter={milter}"
        summary = self._summary(refusal_status(reply.code), reply.text)
        self._reset_envelope()
        self.state = State.MAIL
        return [log, SendClient(reply), SendUpstream(b"RSET\r\n", Purpose.RSET), summary]

    @_input
    def milters_done(
        self,
        kind: MilterVerdictKind,
        reply: Reply | None,
        milter: str | None,
        envelope: ChangedEnvelope | None = None,
        *,
        failed: bool = False,
    ) -> list[Action]:
        """The milters' verdict on the message. CONTINUE with `envelope`: the milters changed
        the envelope, so the upstream transaction is made again (RSET, MAIL, RCPT...)."""
        if milter is not None:
            self._decided_by = f"milter={milter}"
        if kind is MilterVerdictKind.DISCARD:
            summary = self._summary(Outcome.DROPPED, "discarded by a milter")
            self._end_transaction()
            rset = SendUpstream(b"RSET\r\n", Purpose.RSET)
            return [SendClient(MILTER_DISCARDED), rset, summary]
        if kind in (MilterVerdictKind.REJECT, MilterVerdictKind.TEMPFAIL):
            if reply is None:
                raise LocalProtocolError("a refusal by a milter needs a reply")
            outcome = Outcome.FILTER_ERROR if failed else refusal_status(reply.code)
            return self._abandon_message(reply, outcome, f"milter failed: {reply.text}")
        self._decided_by = None  # delivered: nobody refused it
        self.state = State.REPLAY
        if envelope is None:
            return self._replay()
        try:
            lines = _envelope_lines(envelope)
        except ValueError as exc:
            return self._abandon_message(LOCAL_ERROR, Outcome.FILTER_ERROR, str(exc))
        self.envelope.sender = envelope.sender or "<>"
        self.envelope.recipients = []  # those the upstream accepts, as they come
        self.envelope.recipient_params = []
        self._replay_lines = collections.deque(lines)
        self._replay_accepted = 0
        self._replay_refusal = None
        return [SendUpstream(b"RSET\r\n", Purpose.REPLAY_ENVELOPE)]

    def _replay_envelope_reply(self, action: SendUpstream, reply: Reply) -> list[Action]:
        """One reply of the changed envelope's replay; the next line, or our DATA."""
        self._expect(State.REPLAY)
        actions: list[Action] = []
        if action.line.startswith(b"RCPT"):
            recipient = _replay_address(action.line)
            if reply.is_positive:
                self._replay_accepted += 1
                self.envelope.recipients.append(recipient)
            else:
                self._replay_refusal = reply
                message = f"next server refused recipient {recipient}: {reply.text}"
                actions.append(Log(logging.WARNING, message))
        elif not reply.is_positive:  # RSET or the (changed) MAIL FROM
            final = reply if reply.code >= 400 else LOCAL_ERROR
            return self._finish_message(final, self._filter_outcome(), rset=True)
        if self._replay_lines:
            return [*actions, SendUpstream(self._replay_lines.popleft(), Purpose.REPLAY_ENVELOPE)]
        if not self._replay_accepted:
            final = self._replay_refusal or LOCAL_ERROR
            return [*actions, *self._finish_message(final, self._filter_outcome(), rset=True)]
        return [*actions, *self._replay()]

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
            if isinstance(action, _AWAITS_REPLY) or (
                isinstance(action, ReceiveMessage) and action.stream
            ):
                self._pending.append(action)
        return self._count_errors(actions)

    def _expect(self, *states: State) -> None:
        if self.state not in states:
            allowed = ", ".join(state.value for state in states)
            raise LocalProtocolError(f"event illegal in state {self.state.value} ({allowed})")


# Statuses whose reason= is the reply the client got (others: the detail, for the admin).
_REFUSED_BY_REPLY = frozenset({Status.REJECTED, Status.DEFERRED, Status.DROPPED})


def _carries_message(action: Action) -> bool:
    """An exchange that sends the message upstream: our DATA, the replay and its final
    ".", or the stream of skip mode. Their time is the message's upstream delay."""
    if isinstance(action, SendUpstream):
        return action.purpose is Purpose.DATA
    return isinstance(action, SendMessage) or (isinstance(action, ReceiveMessage) and action.stream)


def _mailbox(command: Command, keyword: str) -> str:
    """The recorded envelope address: parsed mailbox, else the raw argument
    (docs/behaviour.md §4.6)."""
    if command.address is not None:
        return command.address
    argument = command.argument
    if argument[: len(keyword)].upper() == keyword:
        argument = argument[len(keyword) :]
    return argument.lstrip(" \t:").strip()


def _envelope_lines(envelope: ChangedEnvelope) -> list[bytes]:
    """MAIL FROM and RCPT TO lines for a changed envelope; ValueError for a line break."""

    def line(keyword: str, address: str, params: tuple[str, ...]) -> bytes:
        text = f"{keyword}:<{address}>" + "".join(f" {p}" for p in params)
        if "\r" in text or "\n" in text:
            raise ValueError(f"milter envelope address with a line break: {text!r}")
        return (text + "\r\n").encode("utf-8", "surrogateescape")

    lines = [line("MAIL FROM", envelope.sender, envelope.sender_params)]
    lines.extend(line("RCPT TO", address, params) for address, params in envelope.recipients)
    return lines


def _replay_address(line: bytes) -> str:
    """The address of one of our replayed RCPT TO lines."""
    return parse_command(line).address or ""


def _bdat_size(command: Command) -> int:
    words = command.argument.split()
    if words and words[0].isascii() and words[0].isdigit():
        return int(words[0])
    return 0
