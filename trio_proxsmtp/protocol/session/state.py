"""The session's data, apart from its entry point: what the small machines and their
handlers read and write (they annotate with `SessionState`, so that none of them imports
machine.py, which imports them all through the table).  `Session` (machine.py) adds
`handle`, the one entry point, and routes `dispatch` through the command gates."""

from __future__ import annotations

import collections

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.session.actions import Action
from trio_proxsmtp.protocol.session.envelope import AcceptedEnvelope, MessageFacts
from trio_proxsmtp.protocol.session.parts import (
    Auth,
    Chunking,
    EnvelopeReplay,
    ErrorCount,
    PolicyService,
    UpstreamTLS,
    Xclient,
    Xforward,
)
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.session.states import MESSAGE_STATES, State
from trio_proxsmtp.protocol.smtp.commands import Command
from trio_proxsmtp.protocol.smtp.ehlo import Extensions

__all__ = ["SessionState"]


class SessionState:
    """One client connection's SMTP state (see the module docstring)."""

    def __init__(self, policy: SessionPolicy) -> None:
        self.policy = policy
        self.state = State.GREETING
        self.envelope = AcceptedEnvelope()
        self.extensions = Extensions(frozenset(), None)
        self.helo_line: bytes | None = None  # the client's accepted HELO/EHLO, for XCLIENT
        self.helo_name: str | None = None
        self.messages = 0  # transactions finished on this connection
        self.tls = False  # the client connection is TLS (after STARTTLS, or ListenTLS)
        self.relay: str | None = None  # the upstream's address, for the summary's relay=
        self.facts = MessageFacts()  # the current message's size and stage durations
        # The machines the session is made of.
        self.auth = Auth()
        self.xclient = Xclient()
        self.outtls = UpstreamTLS()  # TLS towards the next server
        self.chunking = Chunking()
        self.replay = EnvelopeReplay()  # the milters' changed envelope
        self.limits = ErrorCount(policy.hard_error_limit)
        self.policy_service = PolicyService()  # PolicyService: asked at RCPT

        self.xforward = Xforward()  # XForward: on (issue 23)
        # Exchanges sent upstream, oldest first: each upstream reply answers the head.
        self.exchanges: collections.deque[Action] = collections.deque()
        self._error: LocalProtocolError | None = None  # sticky: set once, refuses all
        # Milters: the command they let through (dispatched once more, without asking),
        # and who decided the message's fate (summary).
        self.milter_passed: Command | None = None
        self.decided_by: str | None = None

    @property
    def in_message(self) -> bool:
        """A message is on its way (received, filtered or replayed) and not yet answered."""
        return self.state in MESSAGE_STATES

    @property
    def protocol_name(self) -> str | None:
        """How the client greeted: "ESMTP" (EHLO), "SMTP" (HELO), None before either."""
        line = self.helo_line
        if line is None:
            return None
        return "ESMTP" if line[:4].upper() == b"EHLO" else "SMTP"

    @property
    def pipelining_offered(self) -> bool:
        """Our reply to the client's EHLO offered PIPELINING (RFC 2920): it may end a
        pipelined group with QUIT and half-close (docs/behaviour.md §11.20)."""
        return self.policy.pipelining and self.protocol_name == "ESMTP"

    def dispatch(self, command: Command, *, entry: bool = False) -> list[Action]:
        """A client command through the gates; `Session` (machine.py) implements it."""
        raise NotImplementedError

    def filter_skipped(self) -> bool:
        """Skip: authenticated skips FilterCommand only; the milters still see the message."""
        return self.policy.skip_authenticated and self.auth.authenticated
