"""What a milter answers, decoded: its verdict on a stage, the option negotiation, the
end-of-message modifications (and the action flag each one needs), PROGRESS.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from trio_proxsmtp.protocol.milter.codes import MacroStage, MilterActions, Proto

__all__ = [
    "MODIFICATION_ACTION",
    "AddHeader",
    "AddRecipient",
    "ChangeHeader",
    "ChangeSender",
    "DeleteRecipient",
    "InsertHeader",
    "MilterAnswer",
    "MilterVerdict",
    "MilterVerdictKind",
    "Modification",
    "Negotiate",
    "Progress",
    "Quarantine",
    "ReplaceBody",
]


class MilterVerdictKind(enum.Enum):
    CONTINUE = "continue"
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"
    SKIP = "skip"  # only after a BODY chunk, when negotiated


@attrs.frozen
class MilterVerdict:
    """A milter's answer to a stage; ``reply`` is the SMFIR_REPLYCODE text (no CRLF at end)."""

    kind: MilterVerdictKind
    reply: str | None = None


@attrs.frozen
class Negotiate:
    """SMFIC_OPTNEG / SMFIR_OPTNEG; ``macros`` (answer only) maps a stage to macro names."""

    version: int
    actions: MilterActions
    protocol: Proto
    macros: Mapping[MacroStage, tuple[str, ...]] = attrs.field(factory=dict)


@attrs.frozen
class AddHeader:
    name: str
    value: str


@attrs.frozen
class InsertHeader:
    index: int  # 0: before the first header
    name: str
    value: str


@attrs.frozen
class ChangeHeader:
    index: int  # 1-based among the headers of that name; an empty value deletes
    name: str
    value: str


@attrs.frozen
class ChangeSender:
    sender: str
    args: str | None = None


@attrs.frozen
class AddRecipient:
    recipient: str
    args: str | None = None  # SMFIR_ADDRCPT_PAR when not None


@attrs.frozen
class DeleteRecipient:
    recipient: str


@attrs.frozen
class ReplaceBody:
    chunk: bytes  # one piece; the new body is all the pieces in order


@attrs.frozen
class Quarantine:
    reason: str


Modification = (
    AddHeader
    | InsertHeader
    | ChangeHeader
    | ChangeSender
    | AddRecipient
    | DeleteRecipient
    | ReplaceBody
    | Quarantine
)
MODIFICATION_ACTION: dict[type[Modification], MilterActions] = {
    AddHeader: MilterActions.ADDHDRS,
    InsertHeader: MilterActions.ADDHDRS,
    ChangeHeader: MilterActions.CHGHDRS,
    ChangeSender: MilterActions.CHGFROM,
    AddRecipient: MilterActions.ADDRCPT,
    DeleteRecipient: MilterActions.DELRCPT,
    ReplaceBody: MilterActions.CHGBODY,
    Quarantine: MilterActions.QUARANTINE,
}


@attrs.frozen
class Progress:
    """SMFIR_PROGRESS: the milter is still working (resets the timeout)."""


MilterAnswer = MilterVerdict | Negotiate | Modification | Progress
