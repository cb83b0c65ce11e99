"""What the session asks the relay to do (its actions), and the enum they carry.

Every action is a frozen value; the relay performs them in order (relay/perform.py) and
reports what came of them as events (protocol/session/events.py).
"""

from __future__ import annotations

import enum

import attrs

from trio_proxsmtp.protocol.message.summary import MessageSummary, Status
from trio_proxsmtp.protocol.smtp.commands import Command
from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = [
    "AbortMilters",
    "Action",
    "AskMilters",
    "AskPolicy",
    "Close",
    "Log",
    "Purpose",
    "ReceiveChunk",
    "ReceiveMessage",
    "RunFilter",
    "RunMilters",
    "SendClient",
    "SendMessage",
    "SendUpstream",
    "SkipBytes",
    "StartTLS",
    "StartUpstreamTLS",
    "Summary",
]


class Purpose(enum.Enum):
    """Why a line went upstream: decides what its reply does."""

    # Members are singletons compared by identity: hash them so too, in C (Enum's own
    # __hash__ is Python code, and these are dict keys on every input; bench/PROFILE.md).
    __hash__ = object.__hash__

    COMMAND = "command"  # a client command: the reply is relayed (rewritten where needed)
    AUTH_CONTINUATION = "auth"  # a client line inside an AUTH exchange
    XCLIENT = "xclient"  # our XCLIENT: reply swallowed
    XCLIENT_HELO = "xclient-helo"  # HELO/EHLO re-sent after XCLIENT (B20): reply swallowed
    RSET = "rset"  # our RSET after a rejected message: reply swallowed
    DATA = "data"  # our DATA before replaying a spooled message
    SKIP_DATA = "skip-data"  # the client's DATA passed through (Skip: authenticated)
    REPLAY_ENVELOPE = "replay-envelope"  # RSET/MAIL/RCPT of an envelope a milter changed
    UPSTREAM_EHLO = "upstream-ehlo"  # OutTLS may/encrypt: our EHLO before STARTTLS
    UPSTREAM_STARTTLS = "upstream-starttls"  # OutTLS may/encrypt: our STARTTLS
    XFORWARD = "xforward"  # our XFORWARD before a client's MAIL (XForward: on): swallowed


# ---------------------------------------------------------------------------------------
# Actions: what the relay must do next.


@attrs.frozen
class SendUpstream:
    """Write `line` upstream, read one complete reply, give it to the session as an `UpstreamReply`.

    `command` is the client command the line carries, or (XCLIENT and the HELO/EHLO re-sent
    after it) the client command that waits for that exchange to finish.
    """

    line: bytes
    purpose: Purpose
    command: Command | None = None


@attrs.frozen
class SendClient:
    reply: Reply


@attrs.frozen
class ReceiveMessage:
    """Read the client's message up to <CRLF>.<CRLF>.

    stream=False: spool it, then report `MessageReceived(size)`.
    stream=True (Skip: authenticated): pass it straight upstream with its terminator, read
    one reply and report it as an `UpstreamReply`.
    """

    stream: bool


@attrs.frozen
class RunFilter:
    """Run FilterCommand over the spooled message, then report `FilterDone`."""


@attrs.frozen
class AskMilters:
    """Ask the milters about a client command (HELO/EHLO, MAIL, RCPT, DATA) before it goes
    any further, then report `MiltersDecided(action, kind, reply, milter)`."""

    command: Command


@attrs.frozen
class AskPolicy:
    """Ask PolicyService about a client's RCPT before it goes any further, then report
    `PolicyDecided(action, verdict)` (protocol/session/policy_service.py)."""

    command: Command


@attrs.frozen
class AbortMilters:
    """The transaction ended without a message (RSET, a refused MAIL): tell the milters."""


@attrs.frozen
class RunMilters:
    """End of message: give the spooled (filtered) message to the milters, apply their
    edits, then report `MiltersDone`."""


@attrs.frozen
class SendMessage:
    """Replay the spooled (filtered) message upstream with its header, dot-stuffed, and the
    final ".", read one reply and report it as an `UpstreamReply`.

    bdat=True (a message that came by BDAT, to a next server offering CHUNKING): as BDAT
    chunks instead, no DATA before them; the reply given is the LAST chunk's, or the first
    chunk reply that is not positive."""

    bdat: bool = False


@attrs.frozen
class ReceiveChunk:
    """Read the `size` bytes of a BDAT chunk into the spool (RFC 3030; Chunking: on), then
    report `ChunkReceived`; `last`: the LAST chunk, the message is complete."""

    size: int
    last: bool


@attrs.frozen
class SkipBytes:
    """Discard this many client bytes (the chunk of a BDAT we refused): never commands."""

    count: int


@attrs.frozen
class Log:
    level: int
    message: str


@attrs.frozen
class Summary:
    """The per-message summary line (docs/behaviour.md §9.2), logged at INFO.

    `message` holds the facts; `upstream_code` is the code of the next server's final
    reply (None when the message never got one), for the metrics.
    """

    message: MessageSummary
    upstream_code: int | None = None

    @property
    def text(self) -> str:
        return self.message.line()

    def __str__(self) -> str:
        """The text, built only when a log record is formatted (not at levels that drop it)."""
        return self.message.line()

    @property
    def outcome(self) -> Status:
        return self.message.status


@attrs.frozen
class Close:
    """Close both connections (after QUIT)."""


@attrs.frozen
class StartTLS:
    """Discard what the client sent after STARTTLS, do the TLS handshake, then report
    `ClientTLSStarted` (RFC 3207: the client starts over with EHLO)."""


@attrs.frozen
class StartUpstreamTLS:
    """The next server said 220 to our STARTTLS: do the TLS handshake with it, then report
    `UpstreamTLSStarted(command)` (`command`: the client's HELO/EHLO waiting)."""

    command: Command


Action = (
    SendUpstream
    | SendClient
    | ReceiveMessage
    | ReceiveChunk
    | StartUpstreamTLS
    | RunFilter
    | AskMilters
    | AskPolicy
    | AbortMilters
    | RunMilters
    | SendMessage
    | SkipBytes
    | StartTLS
    | Log
    | Summary
    | Close
)
