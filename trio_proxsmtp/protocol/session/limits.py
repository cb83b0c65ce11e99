"""The limits on a client (docs/behaviour.md, "Limits"): MaxRecipients (the envelope never
grows past it, pipelined RCPTs in flight included), HardErrorLimit (error replies before
421 and close; a delivered message resets the count) and the message size (MaxMessageSize
or the next server's SIZE, the smaller; a MAIL declaring more is refused at once)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.commands import Command, Verb
from trio_proxsmtp.protocol.session.actions import Action, Close, Log, SendClient, SendUpstream
from trio_proxsmtp.protocol.session.gate import Gate
from trio_proxsmtp.protocol.session.wire import TOO_MANY_ERRORS, TOO_MANY_RECIPIENTS

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.machine import Session

__all__ = ["MAX_RECIPIENTS", "ErrorCount", "declared_too_big", "size_limit"]


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


def size_limit(session: Session) -> int | None:
    """The largest message accepted: MaxMessageSize or the upstream's SIZE, the smaller."""
    limits = [x for x in (session.policy.max_message_size, session.extensions.size_limit) if x]
    return min(limits) if limits else None


def declared_too_big(session: Session, command: Command) -> bool:
    """A MAIL whose SIZE= is over MaxMessageSize (RFC 1870; the upstream's own SIZE it
    checks itself)."""
    limit = session.policy.max_message_size
    if not limit:
        return False
    for param in command.params:
        name, _, value = param.partition("=")
        if name.upper() == "SIZE" and value.isascii() and value.isdigit():
            return int(value) > limit
    return False


def _too_many_recipients(session: Session, command: Command) -> bool:
    """MaxRecipients: the envelope (kept in memory) never grows past it."""
    limit = session.policy.max_recipients
    if not limit:
        return False
    accepted = len(session.envelope.recipients)
    pending = session.exchanges
    if not pending:  # lock-step: nothing in flight
        return accepted >= limit
    # RCPTs sent upstream in a pipelined group and not yet answered count too.
    in_flight = sum(
        1
        for action in pending
        if isinstance(action, SendUpstream)
        and action.command is not None
        and action.command.verb is Verb.RCPT
    )
    return accepted + in_flight >= limit


def _too_many(session: Session, command: Command) -> list[Action]:
    return [SendClient(TOO_MANY_RECIPIENTS)]


MAX_RECIPIENTS = Gate("max recipients", frozenset({Verb.RCPT}), _too_many_recipients, _too_many)
