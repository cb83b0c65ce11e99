"""The session's inputs: what the relay saw or did, one frozen event each, given to
`Session.handle` (protocol/session/machine.py).

Every piece of the session's state that the relay once wrote from outside (the client's
TLS under ListenTLS, the next server's under OutTLS: implicit, the client's host name for
XCLIENT) is an event here, so it goes through the same table and the same sticky error.
"""

from __future__ import annotations

import attrs

from trio_proxsmtp.protocol.message.edit import MilterEnvelope
from trio_proxsmtp.protocol.message.summary import Status
from trio_proxsmtp.protocol.milter.messages import MilterVerdictKind
from trio_proxsmtp.protocol.policy import PolicyVerdict
from trio_proxsmtp.protocol.session.actions import Action, AskMilters, AskPolicy
from trio_proxsmtp.protocol.smtp.commands import Command
from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = [
    "BadCommandLine",
    "ChunkReceived",
    "ClientCommand",
    "ClientNameKnown",
    "ClientTLSActive",
    "ClientTLSStarted",
    "CommandTooLong",
    "ConnectionEnded",
    "Event",
    "FilterDone",
    "Greeting",
    "MessageFailed",
    "MessageReceived",
    "MessageStreamed",
    "MiltersDecided",
    "MiltersDone",
    "PolicyDecided",
    "UpstreamReply",
    "UpstreamTLSActive",
    "UpstreamTLSStarted",
]


@attrs.frozen
class Greeting:
    """The upstream's banner; `relay` is the address the relay connected to."""

    reply: Reply
    relay: str | None = None


@attrs.frozen
class ClientCommand:
    """A client command line (only in the command states, and between BDAT chunks)."""

    command: Command


@attrs.frozen
class CommandTooLong:
    """A client command line over the limit: answered, never forwarded (docs/behaviour.md
    §4.1)."""


@attrs.frozen
class BadCommandLine:
    """A client line with a byte no command may hold (protocol.commands.
    check_command_line): answered, never forwarded, AUTH continuations included."""

    reason: str


@attrs.frozen
class UpstreamReply:
    """The upstream's next complete reply: it answers the oldest exchange pending (when
    `exchange` is given, it must be that one).

    `seconds`: how long that exchange took (sending the message included); the ones of the
    message's DATA and final "." are its upstream delay.
    """

    reply: Reply
    seconds: float = 0.0
    exchange: Action | None = None


@attrs.frozen
class MessageReceived:
    """The client's message is spooled (`size` bytes, un-stuffed, read in `seconds`)."""

    size: int
    seconds: float = 0.0


@attrs.frozen
class MessageFailed:
    """The message could not be spooled (disk full...); it was still read to its end."""

    reply: Reply
    detail: str
    size: int | None = None
    seconds: float = 0.0


@attrs.frozen
class MessageStreamed:
    """Skip mode: the client's message went upstream as it came (`size` bytes, read in
    `seconds`); the upstream's reply to it follows as an `UpstreamReply`."""

    size: int
    seconds: float = 0.0


@attrs.frozen
class ChunkReceived:
    """A BDAT chunk of `size` bytes is spooled (`total` so far, `seconds` since the first
    chunk began); `last`: it was the LAST chunk."""

    size: int
    last: bool
    total: int
    seconds: float = 0.0


@attrs.frozen
class FilterDone:
    """The filter's verdict: accepted -> replay; otherwise `reply` goes to the client.

    A refusal (REJECTED or DEFERRED) is logged by its reply's code: 4xx DEFERRED, 5xx
    REJECTED. `seconds`: how long the filter ran.
    """

    accepted: bool
    reply: Reply | None
    status: Status
    detail: str = ""
    seconds: float = 0.0
    scanner: str | None = None  # the scanners' result for the summary (scanner=...)


@attrs.frozen
class MiltersDecided:
    """The milters' answer to a client command: it goes on, or `reply` answers it."""

    action: AskMilters
    kind: MilterVerdictKind
    reply: Reply | None
    milter: str | None


@attrs.frozen
class PolicyDecided:
    """PolicyService's answer to a client's RCPT (its failure already turned into
    PolicyDefaultAction's verdict by the relay)."""

    action: AskPolicy
    verdict: PolicyVerdict


@attrs.frozen
class MiltersDone:
    """The milters' verdict on the message. CONTINUE with `envelope`: the milters changed
    the envelope, so the upstream transaction is made again (RSET, MAIL, RCPT...)."""

    kind: MilterVerdictKind
    reply: Reply | None
    milter: str | None
    envelope: MilterEnvelope | None = None
    failed: bool = False


@attrs.frozen
class ClientTLSStarted:
    """The STARTTLS handshake with the client is done: it says EHLO again (RFC 3207)."""


@attrs.frozen
class ClientTLSActive:
    """The client connection is TLS from its first byte (ListenTLS)."""


@attrs.frozen
class UpstreamTLSStarted:
    """The TLS handshake with the next server is done: the client's HELO/EHLO (`command`)
    goes over it, and its reply (the new extensions) is the client's."""

    command: Command


@attrs.frozen
class UpstreamTLSActive:
    """The next server's connection is TLS from its first byte (OutTLS: implicit)."""


@attrs.frozen
class ClientNameKnown:
    """The client's host name, for XCLIENT NAME= (looked up while connecting)."""

    name: str


@attrs.frozen
class ConnectionEnded:
    """The connection ends (in the middle of a message, perhaps): nothing more was
    delivered, and a message on its way still gets its one summary line.

    `seconds`: how long that message had been under way (from the start of its reading,
    or of its first chunk); the stage it was cut short in gets what its finished stages
    do not account for (docs/behaviour.md §9.2).
    """

    reason: str
    seconds: float = 0.0


Event = (
    Greeting
    | ClientCommand
    | CommandTooLong
    | BadCommandLine
    | UpstreamReply
    | MessageReceived
    | MessageFailed
    | MessageStreamed
    | ChunkReceived
    | FilterDone
    | MiltersDecided
    | MiltersDone
    | PolicyDecided
    | ClientTLSStarted
    | ClientTLSActive
    | UpstreamTLSStarted
    | UpstreamTLSActive
    | ClientNameKnown
    | ConnectionEnded
)
