"""AUTH, relayed (RFC 4954): whether an exchange is waiting for the client's continuation
lines, and whether it ended in 235.  The proxy never looks at the credentials; it only
learns `authenticated` for Skip: authenticated (docs/behaviour.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.commands import Command
from trio_proxsmtp.protocol.replies import Reply
from trio_proxsmtp.protocol.session.actions import Action, Log, Purpose, SendClient, SendUpstream
from trio_proxsmtp.protocol.session.gate import ANY_VERB, Gate

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.machine import Session

__all__ = ["CONTINUATION", "Auth"]


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


def _continuing(session: Session, command: Command) -> bool:
    return session.auth.in_progress


def _continue(session: Session, command: Command) -> list[Action]:
    return [SendUpstream(command.line, Purpose.AUTH_CONTINUATION, command)]


# Inside an AUTH exchange every client line is a continuation, whatever it looks like.
CONTINUATION = Gate("auth continuation", ANY_VERB, _continuing, _continue, entry=True)
