"""The limits on a client (docs/behaviour.md, "Limits"): MaxRecipients (the envelope never
grows past it, pipelined RCPTs in flight included), HardErrorLimit (error replies before
421 and close; a delivered message resets the count) and the message size (MaxMessageSize
or the next server's SIZE, the smaller; a MAIL declaring more is refused at once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.session.actions import Action, SendClient, SendUpstream
from trio_proxsmtp.protocol.session.gate import Gate
from trio_proxsmtp.protocol.session.wire import TOO_MANY_RECIPIENTS
from trio_proxsmtp.protocol.smtp.commands import Command, Verb

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = ["MAX_RECIPIENTS", "declared_size", "declared_too_big", "size_limit"]


def size_limit(session: SessionState) -> int | None:
    """The largest message accepted: MaxMessageSize or the upstream's SIZE, the smaller."""
    limits = [x for x in (session.policy.max_message_size, session.extensions.size_limit) if x]
    return min(limits) if limits else None


def declared_too_big(session: SessionState, command: Command) -> bool:
    """A MAIL whose SIZE= is over MaxMessageSize (RFC 1870; the upstream's own SIZE it
    checks itself)."""
    limit = session.policy.max_message_size
    if not limit:
        return False
    size = declared_size(command.params)
    return size is not None and size > limit


def declared_size(params: Sequence[str]) -> int | None:
    """MAIL's SIZE= (RFC 1870), None when it has none (or not a number)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.upper() == "SIZE" and value.isascii() and value.isdigit():
            return int(value)
    return None


def _too_many_recipients(session: SessionState, command: Command) -> bool:
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


def _too_many(session: SessionState, command: Command) -> list[Action]:
    return [SendClient(TOO_MANY_RECIPIENTS)]


MAX_RECIPIENTS = Gate("max recipients", frozenset({Verb.RCPT}), _too_many_recipients, _too_many)
