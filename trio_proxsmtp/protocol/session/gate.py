"""One command gate: a check a client command meets before it is forwarded as is, and
what the session does instead when the check holds.  The gates, in order, are in
protocol/session/gates.py; each part of the session defines its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from trio_proxsmtp.protocol.smtp.commands import Command, Verb

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.actions import Action
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = ["ANY_VERB", "Gate"]

ANY_VERB = frozenset(Verb)


@attrs.frozen
class Gate:
    """`applies(session, command)` (no side effect: PIPELINING asks it too) decides;
    `answer(session, command)` is what the session does then.  `verbs`: the commands it
    can apply to.  `entry`: checked only when the command comes from the client, not when
    a command that waited (for XCLIENT, the milters, TLS) is dispatched again."""

    name: str
    verbs: frozenset[Verb]
    applies: Callable[[SessionState, Command], bool]
    answer: Callable[[SessionState, Command], list[Action]]
    entry: bool = False
