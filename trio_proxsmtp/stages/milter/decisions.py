"""What the milters are told about a connection and what they decide: `MilterContext` (the
macros and SMFIC_CONNECT), `MilterDecision` for one SMTP stage, `EndOfMessage` for the
message, and the replies given when a milter refuses without a text or fails.
"""

from __future__ import annotations

import ipaddress

import attrs

from trio_proxsmtp.protocol.message.edit import EditedMessage, MilterEnvelope
from trio_proxsmtp.protocol.milter.messages import MilterVerdictKind

__all__ = [
    "CONTINUE",
    "FAILURE_REJECT_REPLY",
    "FAILURE_TEMPFAIL_REPLY",
    "REJECT_REPLY",
    "TEMPFAIL_REPLY",
    "EndOfMessage",
    "MilterContext",
    "MilterDecision",
]

REJECT_REPLY = "550 5.7.1 Command rejected"
TEMPFAIL_REPLY = "451 4.7.1 Service unavailable - try again later"
FAILURE_TEMPFAIL_REPLY = "451 4.3.5 Server configuration problem - try again later"
FAILURE_REJECT_REPLY = "554 5.7.1 Service unavailable - mail filter failed"


@attrs.frozen
class MilterContext:
    """What the milters are told about the connection (macros and SMFIC_CONNECT)."""

    client_address: str  # IP literal, or "" when unknown
    client_port: int = 0
    client_name: str = "unknown"  # verified reverse DNS name, else "unknown"
    hostname: str = "localhost"  # macro j: our host name
    daemon_name: str = "trio-proxsmtpd"
    daemon_address: str = ""
    daemon_port: int = 0
    unix: bool = False  # the client came over a unix socket

    def family(self) -> str:
        if self.unix:
            return "L"
        try:
            return "6" if ipaddress.ip_address(self.client_address).version == 6 else "4"
        except ValueError:
            return "U"


@attrs.frozen
class MilterDecision:
    """The answer for one SMTP stage. ``reply`` is set for REJECT and TEMPFAIL.

    ``kind`` is CONTINUE, REJECT, TEMPFAIL or DISCARD (ACCEPT is handled here: that milter
    is skipped for the rest of the message or connection). ``milter`` names who decided
    (its ``Milters:`` entry), ``failed`` says it was MilterDefaultAction after a failure.
    """

    kind: MilterVerdictKind
    reply: str | None = None
    milter: str | None = None
    failed: bool = False

    @property
    def proceed(self) -> bool:
        return self.kind is MilterVerdictKind.CONTINUE


CONTINUE = MilterDecision(MilterVerdictKind.CONTINUE)


@attrs.frozen
class EndOfMessage:
    """The result of ``Milters.message``: the decision and what to send upstream."""

    decision: MilterDecision
    message: EditedMessage
    envelope: MilterEnvelope
    modified: bool  # a milter changed the message or the envelope
