"""Our side of one milter conversation, sans-IO: the SMTP stages a milter is told about, the
option negotiation, what each stage sends (NO_* and NR_* flags, SKIP, macros) and which
answer is legal when.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.milter.codec import (
    PacketDecoder,
    decode_response,
    encode_command,
    encode_connect,
    encode_macros,
    encode_optneg,
    packet,
)
from trio_proxsmtp.protocol.milter.codes import (
    ALL_ACTIONS,
    BODY_CHUNK_SIZE,
    MAX_ANSWERS,
    OFFERED_PROTOCOL,
    VERSION,
    MacroStage,
    MilterActions,
    MilterCommand,
    MilterProtocolError,
    Proto,
)
from trio_proxsmtp.protocol.milter.messages import (
    MODIFICATION_ACTION,
    AddRecipient,
    MilterAnswer,
    MilterVerdict,
    MilterVerdictKind,
    Negotiate,
    Progress,
)

__all__ = [
    "NO_REPLY",
    "STAGE_COMMAND",
    "MilterSession",
    "Stage",
    "mail_args",
    "split_body",
]


class Stage(enum.Enum):
    """A point of the SMTP session a milter is told about."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    UNKNOWN = "unknown"
    HEADER = "header"
    EOH = "eoh"
    BODY = "body"
    EOM = "eom"


# The command that tells a milter about each stage (the fake milter reads it back).
STAGE_COMMAND = {
    Stage.CONNECT: MilterCommand.CONNECT,
    Stage.HELO: MilterCommand.HELO,
    Stage.MAIL: MilterCommand.MAIL,
    Stage.RCPT: MilterCommand.RCPT,
    Stage.DATA: MilterCommand.DATA,
    Stage.UNKNOWN: MilterCommand.UNKNOWN,
    Stage.HEADER: MilterCommand.HEADER,
    Stage.EOH: MilterCommand.EOH,
    Stage.BODY: MilterCommand.BODY,
    Stage.EOM: MilterCommand.EOM,
}
_STAGE_MACROS = {
    Stage.CONNECT: MacroStage.CONNECT,
    Stage.HELO: MacroStage.HELO,
    Stage.MAIL: MacroStage.MAIL,
    Stage.RCPT: MacroStage.RCPT,
    Stage.DATA: MacroStage.DATA,
    Stage.EOH: MacroStage.EOH,
    Stage.EOM: MacroStage.EOM,
}
_NOT_WANTED = {
    Stage.CONNECT: Proto.NOCONNECT,
    Stage.HELO: Proto.NOHELO,
    Stage.MAIL: Proto.NOMAIL,
    Stage.RCPT: Proto.NORCPT,
    Stage.DATA: Proto.NODATA,
    Stage.UNKNOWN: Proto.NOUNKNOWN,
    Stage.HEADER: Proto.NOHDRS,
    Stage.EOH: Proto.NOEOH,
    Stage.BODY: Proto.NOBODY,
}
# The SMFIP_NR_* flag by which a milter says it will not answer a stage.
NO_REPLY = {
    Stage.CONNECT: Proto.NR_CONN,
    Stage.HELO: Proto.NR_HELO,
    Stage.MAIL: Proto.NR_MAIL,
    Stage.RCPT: Proto.NR_RCPT,
    Stage.DATA: Proto.NR_DATA,
    Stage.UNKNOWN: Proto.NR_UNKN,
    Stage.HEADER: Proto.NR_HDR,
    Stage.EOH: Proto.NR_EOH,
    Stage.BODY: Proto.NR_BODY,
}


# Responses a milter may give at each stage (besides PROGRESS, and modifications at EOM).
_ALLOWED = {
    Stage.CONNECT: {MilterVerdictKind.CONTINUE, MilterVerdictKind.ACCEPT,
                    MilterVerdictKind.REJECT, MilterVerdictKind.TEMPFAIL,
                    MilterVerdictKind.DISCARD},
    Stage.BODY: set(MilterVerdictKind),
}  # fmt: skip
_DEFAULT_ALLOWED = set(MilterVerdictKind) - {MilterVerdictKind.SKIP}


class MilterSession:
    """One milter for one SMTP connection, MTA side: bytes out for each stage, answers in.

    Use: ``negotiate()`` → send, ``receive()`` until it returns the Negotiate; then per
    stage ``stage(...)`` → bytes to send (``b""`` when the milter asked not to get the
    stage) and, if ``awaiting`` is set, ``receive()`` until a MilterVerdict. At EOM ``receive``
    also returns the modifications, in order, before the final MilterVerdict.
    """

    def __init__(
        self, actions: MilterActions = ALL_ACTIONS, protocol: Proto = OFFERED_PROTOCOL
    ) -> None:
        self.offered_actions = actions
        self.offered_protocol = protocol
        self.actions = MilterActions(0)
        self.protocol = Proto(0)
        self.version = 0
        self.macro_names: Mapping[MacroStage, tuple[str, ...]] = {}
        self.awaiting: Stage | None = None
        self._negotiating = False
        self._decoder = PacketDecoder()
        self._packets: list[tuple[bytes, bytes]] = []
        self.negotiated = False
        self.skipping_body = False
        self._answers_before_verdict = 0  # PROGRESS and modifications since the command

    def negotiate(self) -> bytes:
        self._negotiating = True
        return encode_optneg(VERSION, self.offered_actions, self.offered_protocol)

    def wants(self, stage: Stage) -> bool:
        """Does the milter want to be told about this stage at all?"""
        flag = _NOT_WANTED.get(stage)
        if stage is Stage.BODY and self.skipping_body:
            return False
        return flag is None or not self.protocol & flag

    def _answers(self, stage: Stage) -> bool:
        flag = NO_REPLY.get(stage)
        return flag is None or not self.protocol & flag

    def _macros(self, stage: Stage, macros: Mapping[str, str]) -> bytes:
        macro_stage = _STAGE_MACROS.get(stage)
        if macro_stage is None or not macros:
            return b""
        wanted = self.macro_names.get(macro_stage)
        items = [(n, v) for n, v in macros.items() if wanted is None or n in wanted]
        if not items:
            return b""
        return encode_macros(STAGE_COMMAND[stage], items)

    def stage(
        self,
        stage: Stage,
        *args: str,
        data: bytes = b"",
        macros: Mapping[str, str] | None = None,
        connect: tuple[str, str, int, str] | None = None,
    ) -> bytes:
        """Bytes to send for a stage; sets ``awaiting`` when an answer must be read.

        A stage before the negotiation or while an answer is awaited is our bug
        (LocalProtocolError); everything the milter gets wrong is a MilterProtocolError."""
        if not self.negotiated:
            raise LocalProtocolError("stage before option negotiation")
        if self.awaiting is not None:
            raise LocalProtocolError(f"stage {stage.value} while awaiting {self.awaiting.value}")
        if not self.wants(stage):
            return b""
        out = self._macros(stage, macros or {})
        if stage is Stage.CONNECT:
            assert connect is not None
            out += encode_connect(*connect)
        else:
            out += encode_command(STAGE_COMMAND[stage], *args, data=data)
        if self._answers(stage):
            self.awaiting = stage
            self._answers_before_verdict = 0
        return out

    def abort(self) -> bytes:
        """SMFIC_ABORT (no answer): the message is over, the connection goes on."""
        self.awaiting = None
        self.skipping_body = False
        return packet(MilterCommand.ABORT.value)

    def quit(self) -> bytes:
        self.awaiting = None
        return packet(MilterCommand.QUIT.value)

    def receive(self, data: bytes) -> list[MilterAnswer]:
        """Feed bytes from the milter; return the answers they complete (validated)."""
        self._packets.extend(self._decoder.feed(data))
        answers: list[MilterAnswer] = []
        while self._packets:
            code, payload = self._packets.pop(0)
            answer = decode_response(code, payload)
            answers.append(self._check(answer))
            if isinstance(answer, MilterVerdict | Negotiate):
                break  # anything after the final answer is a protocol error
        if self._packets or (answers and self._decoder.pending and self.awaiting is None):
            raise MilterProtocolError("milter sent data nobody asked for")
        return answers

    def _check(self, answer: MilterAnswer) -> MilterAnswer:
        if self._negotiating:
            if not isinstance(answer, Negotiate):
                raise MilterProtocolError(f"expected option negotiation, got {answer!r}")
            self._accept_negotiation(answer)
            return answer
        stage = self.awaiting
        if stage is None:
            raise MilterProtocolError(f"unexpected {answer!r}")
        if not isinstance(answer, MilterVerdict | Negotiate):
            self._answers_before_verdict += 1
            if self._answers_before_verdict > MAX_ANSWERS:
                raise MilterProtocolError(
                    f"more than {MAX_ANSWERS} packets before the verdict at {stage.value}"
                )
        if isinstance(answer, Progress):
            return answer
        if isinstance(answer, Negotiate):
            raise MilterProtocolError("option negotiation in the middle of a session")
        if isinstance(answer, MilterVerdict):
            allowed = _ALLOWED.get(stage, _DEFAULT_ALLOWED)
            if answer.kind not in allowed or (
                answer.kind is MilterVerdictKind.SKIP and not self.protocol & Proto.SKIP
            ):
                raise MilterProtocolError(f"{answer.kind.value} is not allowed at {stage.value}")
            self.awaiting = None
            if answer.kind is MilterVerdictKind.SKIP:
                self.skipping_body = True
            return answer
        if stage is not Stage.EOM:
            raise MilterProtocolError(f"modification {answer!r} before end of message")
        needed = MODIFICATION_ACTION[type(answer)]
        if isinstance(answer, AddRecipient) and answer.args is not None:
            needed = MilterActions.ADDRCPT_PAR
        if not self.actions & needed:
            raise MilterProtocolError(f"modification {answer!r} was not negotiated")
        return answer

    def _accept_negotiation(self, answer: Negotiate) -> None:
        if answer.version < 2 or answer.version > VERSION:
            raise MilterProtocolError(f"milter protocol version {answer.version} not supported")
        extra_actions = int(answer.actions) & ~int(self.offered_actions)
        if extra_actions:
            raise MilterProtocolError(f"milter wants actions not offered: {extra_actions:#x}")
        extra = int(answer.protocol) & ~int(self.offered_protocol)
        if extra:
            raise MilterProtocolError(f"milter wants protocol steps not offered: {extra:#x}")
        self.version = answer.version
        self.actions = answer.actions
        self.protocol = answer.protocol
        self.macro_names = answer.macros
        self._negotiating = False
        self.negotiated = True


def split_body(chunks: Iterable[bytes], size: int = BODY_CHUNK_SIZE) -> Iterable[bytes]:
    """Re-cut a stream of chunks into pieces of at most ``size`` bytes (SMFIC_BODY)."""
    for chunk in chunks:
        for start in range(0, len(chunk), size):
            yield chunk[start : start + size]


def mail_args(address: str, params: Sequence[str]) -> tuple[str, ...]:
    """SMFIC_MAIL/RCPT strings: ``<address>`` then each ESMTP parameter."""
    return (address if address.startswith("<") else f"<{address}>", *params)
