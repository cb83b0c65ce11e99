"""The state of the small machines the session is made of, apart from their handlers (so
that `state.py` can hold them without importing the handlers): AUTH, XCLIENT, TLS to the
next server, BDAT, the milters' envelope replay, HardErrorLimit, XFORWARD.  Their moves
are in the module of each: auth.py, xclient.py, upstream_tls.py, chunking.py, replay.py,
limits.py, xforward.py."""

from __future__ import annotations

import collections
import logging

from trio_proxsmtp.protocol.session.actions import (
    Action,
    Close,
    Log,
    Purpose,
    SendClient,
    SendUpstream,
)
from trio_proxsmtp.protocol.session.envelope import AcceptedEnvelope
from trio_proxsmtp.protocol.session.wire import TOO_MANY_ERRORS, TOO_MANY_RECIPIENTS
from trio_proxsmtp.protocol.smtp.commands import Command
from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = [
    "Auth",
    "Chunking",
    "EnvelopeReplay",
    "ErrorCount",
    "PolicyService",
    "UpstreamTLS",
    "Xclient",
    "Xforward",
]


class Auth:
    """The AUTH machine: idle, waiting for continuation lines (`in_progress`), and whether
    an AUTH the client started got 235 (`authenticated`)."""

    __slots__ = ("authenticated", "in_progress", "started")

    def __init__(self) -> None:
        self.started = False  # the client sent AUTH (a 235 without it is only logged)
        self.in_progress = False  # the next client line is a continuation, not a command
        self.authenticated = False

    def command_reply(self, reply: Reply) -> list[Action]:
        """The reply to the client's AUTH command."""
        self.started = True
        return self.reply(reply)

    def reply(self, reply: Reply) -> list[Action]:
        """The reply to AUTH or to one of its continuation lines: 334 asks for another."""
        self.in_progress = reply.code == 334
        if reply.code == 235 and self.started:
            self.authenticated = True
        return [SendClient(reply)]

    def cancel(self, note: Log) -> list[Action]:
        """A continuation line we refuse: the upstream waits for one, so the exchange is
        cancelled (RFC 4954 "*"); its 501 is the client's answer, and AUTH is over on both
        sides."""
        return [note, SendUpstream(b"*\r\n", Purpose.AUTH_CONTINUATION)]

    @staticmethod
    def sans_auth_success(reply: Reply) -> list[Action]:
        """A 235 to a command other than AUTH: logged, relayed."""
        if reply.code == 235:
            return [Log(logging.WARNING, "Authentication success code without AUTH")]
        return []


class Xclient:
    """The XCLIENT machine: not offered, offered (`supported`: advertised in an EHLO
    reply, `advertised`, or assumed after HELO), sent (`sent`)."""

    __slots__ = ("advertised", "attributes", "lines", "sent", "supported")

    def __init__(self) -> None:
        self.supported = False
        self.advertised = False  # a refusal of an advertised XCLIENT fails closed
        self.sent = False
        # The attributes the next server names after its XCLIENT keyword (assumed after
        # HELO: ADDR, NAME, HELO), and our XCLIENT lines still to send (several when one
        # would pass 512 bytes).
        self.attributes: frozenset[str] = frozenset()
        self.lines: collections.deque[bytes] = collections.deque()

    def armed(self, wanted: bool, helo_line: bytes | None) -> bool:
        """XClient: on (`wanted`), offered, not yet sent, and a HELO/EHLO to send it for."""
        return wanted and self.supported and not self.sent and helo_line is not None


class Xforward:
    """The XFORWARD machine (XForward: on): not offered, offered (`attributes`: what the
    next server names after its XFORWARD keyword), sent for a MAIL (`sent_for`; the lines
    still to send in `lines`)."""

    __slots__ = ("attributes", "lines", "sent_for")

    def __init__(self) -> None:
        self.attributes: frozenset[str] = frozenset()
        self.lines: collections.deque[bytes] = collections.deque()
        self.sent_for: object = None  # the MAIL command our XFORWARD went before

    def armed(self, wanted: bool, command: object) -> bool:
        """XForward: on (`wanted`), offered, and not yet sent for this command."""
        return wanted and bool(self.attributes) and self.sent_for is not command


class UpstreamTLS:
    """The machine: plain, upgrade tried (`tried`; `plain_ehlo` while STARTTLS is asked),
    TLS (`active`)."""

    __slots__ = ("active", "plain_ehlo", "tried")

    def __init__(self) -> None:
        self.active = False  # the next server's connection is TLS
        self.tried = False  # OutTLS may/encrypt: the upgrade was attempted
        self.plain_ehlo: Reply | None = None  # the next server's EHLO reply before TLS


class Chunking:
    """The BDAT machine: the state CHUNKS while chunks come; `by_bdat` until the message
    is done, for its replay."""

    __slots__ = ("by_bdat",)

    def __init__(self) -> None:
        self.by_bdat = False  # the current message came by BDAT


class EnvelopeReplay:
    """The replay machine: the lines still to send, how many recipients were accepted,
    and the last refusal (the client's answer if none was)."""

    __slots__ = ("accepted", "lines", "refusal")

    def __init__(self) -> None:
        self.lines: collections.deque[bytes] = collections.deque()
        self.accepted = 0
        self.refusal: Reply | None = None

    def start(self, lines: list[bytes]) -> None:
        self.lines = collections.deque(lines)
        self.accepted = 0
        self.refusal = None


class ErrorCount:
    """HardErrorLimit: error replies to the client (ours and the upstream's; not 452 Too
    many recipients, an ordinary answer to a long pipelined list) since the last delivered
    message; at the limit, 421 and close."""

    __slots__ = ("errors", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: none
        self.errors = 0

    def delivered(self) -> None:
        self.errors = 0

    def count(self, actions: list[Action]) -> list[Action]:
        limit = self.limit
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


class PolicyService:
    """The PolicyService machine (policy_service.py): the RCPT it let through (dispatched
    once more, without asking), and the headers its PREPEND answers gave the transaction
    under way, kept with the envelope they belong to (a new MAIL, RSET or the end of the
    message makes a new envelope, and the headers go with the old one)."""

    __slots__ = ("envelope", "headers", "passed")

    def __init__(self) -> None:
        self.passed: Command | None = None  # the RCPT let through
        self.envelope: AcceptedEnvelope | None = None  # the envelope the headers are for
        self.headers: list[str] = []

    def prepend(self, envelope: AcceptedEnvelope, header: str) -> None:
        if self.envelope is not envelope:
            self.envelope, self.headers = envelope, []
        self.headers.append(header)

    def headers_for(self, envelope: AcceptedEnvelope) -> tuple[str, ...]:
        """The PREPEND headers of this envelope's message, in the order they came."""
        return tuple(self.headers) if self.envelope is envelope else ()
