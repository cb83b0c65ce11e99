"""The session's envelope and message facts: what the next server accepted
(`AcceptedEnvelope`; the milters' changed one is protocol/message/edit.py's
`MilterEnvelope`), and what the summary line says of the current message beyond its
envelope (`MessageFacts`)."""

from __future__ import annotations

import attrs

from trio_proxsmtp.protocol.message.summary import Delays
from trio_proxsmtp.protocol.smtp.commands import Command

__all__ = ["AcceptedEnvelope", "MessageFacts", "mailbox"]


@attrs.define
class AcceptedEnvelope:
    """What the upstream accepted for the current transaction (docs/behaviour.md §4.2, §6.1)."""

    sender: str | None = None
    recipients: list[str] = attrs.field(factory=list)
    remote_addr: str | None = None  # from an accepted XFORWARD ADDR=
    remote_helo: str | None = None  # from an accepted XFORWARD HELO=
    sender_params: tuple[str, ...] = ()  # MAIL's ESMTP parameters (kept for the milters)
    recipient_params: list[tuple[str, ...]] = attrs.field(factory=list)  # each RCPT's


@attrs.define
class MessageFacts:
    """What the summary line says about the current message beyond its envelope: its size
    and the seconds each stage took, as the relay measured them (the session keeps no
    clock: durations come in with the inputs that end each stage)."""

    size: int | None = None
    receive: float = 0.0
    filter: float = 0.0
    upstream: float = 0.0
    scanner: str | None = None  # the native scanners' result (docs/behaviour.md §11.16)

    @property
    def delays(self) -> Delays:
        return Delays(self.receive, self.filter, self.upstream)


def mailbox(command: Command, keyword: str) -> str:
    """The recorded envelope address: parsed mailbox, else the raw argument
    (docs/behaviour.md §4.6)."""
    if command.address is not None:
        return command.address
    argument = command.argument
    if argument[: len(keyword)].upper() == keyword:
        argument = argument[len(keyword) :]
    return argument.lstrip(" \t:").strip()
