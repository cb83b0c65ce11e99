"""AUTH, relayed (RFC 4954): whether an exchange is waiting for the client's continuation
lines, and whether it ended in 235.  The proxy never looks at the credentials; it only
learns `authenticated` for Skip: authenticated (docs/behaviour.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.session.actions import Action, Purpose, SendUpstream
from trio_proxsmtp.protocol.session.gate import ANY_VERB, Gate
from trio_proxsmtp.protocol.smtp.commands import Command

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = ["CONTINUATION"]


def _continuing(session: SessionState, command: Command) -> bool:
    return session.auth.in_progress


def _continue(session: SessionState, command: Command) -> list[Action]:
    return [SendUpstream(command.line, Purpose.AUTH_CONTINUATION, command)]


# Inside an AUTH exchange every client line is a continuation, whatever it looks like.
CONTINUATION = Gate("auth continuation", ANY_VERB, _continuing, _continue, entry=True)
