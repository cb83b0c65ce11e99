"""A scriptable milter for tests: test your milter policy without running a milter daemon.

    milter = FakeMilter(
        {
            "rcpt": lambda cmd: reject("550 5.7.1 no thanks") if "bad@" in cmd.args[0] else None,
            "eom": [AddHeader("X-Checked", "yes"), CONTINUE],
        }
    )
    async with milter.serving() as address:   # "inet:127.0.0.1:PORT"
        ...  # point Milters: at it
    assert milter.sessions[0].stages() == ["connect", "helo", "mail", "rcpt", ...]

A stage's script entry is an answer (a `MilterVerdict`), a list of answers (modifications,
PROGRESS, a `Pause` or raw ``bytes``, then the verdict), raw ``bytes`` to send as they are,
`HANGUP` (close the connection), `STALL` (answer nothing more on that connection), ``None``
(continue), or a function of the received `MtaCommand` returning one of those. Stages
without an entry continue. Every command received is recorded, per connection, in
`FakeMilterSession`.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TypeAlias

import attrs
import trio

from trio_proxsmtp.protocol.milter.codec import (
    MtaCommand,
    PacketDecoder,
    decode_command,
    encode_response,
)
from trio_proxsmtp.protocol.milter.codes import (
    ALL_ACTIONS,
    VERSION,
    MacroStage,
    MilterActions,
    MilterCommand,
    MilterProtocolError,
    Proto,
)
from trio_proxsmtp.protocol.milter.messages import (
    MilterAnswer,
    MilterVerdict,
    MilterVerdictKind,
    Negotiate,
)
from trio_proxsmtp.protocol.milter.session import NO_REPLY, STAGE_COMMAND
from trio_proxsmtp.testing.listening import serving_on

__all__ = [
    "ACCEPT",
    "CONTINUE",
    "DISCARD",
    "HANGUP",
    "REJECT",
    "STALL",
    "TEMPFAIL",
    "FakeMilter",
    "FakeMilterSession",
    "Pause",
    "reject",
]


class _Special(enum.Enum):
    HANGUP = "hangup"
    STALL = "stall"


HANGUP = _Special.HANGUP
STALL = _Special.STALL
CONTINUE = MilterVerdict(MilterVerdictKind.CONTINUE)
ACCEPT = MilterVerdict(MilterVerdictKind.ACCEPT)
REJECT = MilterVerdict(MilterVerdictKind.REJECT)
TEMPFAIL = MilterVerdict(MilterVerdictKind.TEMPFAIL)
DISCARD = MilterVerdict(MilterVerdictKind.DISCARD)


@attrs.frozen
class Pause:
    """In a list of answers: wait this many seconds before sending the next one."""

    seconds: float


def reject(reply: str) -> MilterVerdict:
    """SMFIR_REPLYCODE: a custom 4xx/5xx reply (e.g. ``"550 5.7.1 spam"``)."""
    kind = MilterVerdictKind.TEMPFAIL if reply.startswith("4") else MilterVerdictKind.REJECT
    return MilterVerdict(kind, reply)


Answer: TypeAlias = MilterAnswer | Sequence[MilterAnswer | Pause | bytes] | bytes | _Special | None
Script: TypeAlias = Mapping[str, Answer | Callable[[MtaCommand], Answer]]

# Stage names are the values of protocol.milter.session.Stage: the tables are the client's own.
_STAGE_NAMES = {command: stage.value for stage, command in STAGE_COMMAND.items()}
_NO_REPLY = {stage.value: flag for stage, flag in NO_REPLY.items()}


@attrs.define
class FakeMilterSession:
    """What one MTA connection sent: every command, macros merged by name."""

    commands: list[MtaCommand] = attrs.field(factory=list)
    macros: dict[str, str] = attrs.field(factory=dict)
    closed: bool = False  # the MTA closed the connection (or sent QUIT)
    negotiated: Negotiate | None = None  # what the MTA offered
    stalled: bool = False  # a STALL answer: nothing more is answered

    def stages(self) -> list[str]:
        """The stage names received, in order (``abort``/``quit`` included, macros not)."""
        names = {**_STAGE_NAMES, MilterCommand.ABORT: "abort", MilterCommand.QUIT: "quit"}
        return [names[c.command] for c in self.commands if c.command in names]

    def macros_at(self, stage: str) -> dict[str, str]:
        """The macros sent for one stage (``"eom"``, ...), merged over its commands."""
        merged: dict[str, str] = {}
        for c in self.commands:
            if (
                c.command is MilterCommand.MACRO
                and _STAGE_NAMES.get(MilterCommand(c.macro_for)) == stage
            ):
                merged.update(c.macros)
        return merged

    def of(self, stage: str) -> list[MtaCommand]:
        return [c for c in self.commands if _STAGE_NAMES.get(c.command) == stage]

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(c.args[0], c.args[1]) for c in self.of("header")]

    @property
    def body(self) -> bytes:
        return b"".join(c.data for c in self.of("body"))


class FakeMilter:
    """A milter server on a loopback port (or unix socket) answering per a script."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        actions: MilterActions = ALL_ACTIONS,
        protocol: Proto | None = None,
        macro_lists: Mapping[MacroStage, Sequence[str]] | None = None,
        version: int = VERSION,
        negotiation: Answer = None,
    ) -> None:
        self.script: Script = dict(script or {})
        self.actions = actions
        self.protocol = protocol if protocol is not None else Proto(0)
        self.macro_lists = {k: tuple(v) for k, v in (macro_lists or {}).items()}
        self.version = version
        self.negotiation = negotiation  # replaces the OPTNEG answer when not None
        self.sessions: list[FakeMilterSession] = []
        self.address = ""

    @contextlib.asynccontextmanager
    async def serving(self, unix_path: str | None = None) -> AsyncIterator[str]:
        """Listen (127.0.0.1 port 0, or ``unix_path``); yields the ``Milters:`` address."""
        async with serving_on(self._serve, unix_path) as address:
            self.address = address
            yield self.address

    async def _serve(self, stream: trio.abc.Stream) -> None:
        session = FakeMilterSession()
        self.sessions.append(session)
        decoder = PacketDecoder()
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                for code, payload in decoder.feed(bytes(data)):
                    command = decode_command(code, payload)
                    session.commands.append(command)
                    if not await self._answer(stream, session, command):
                        return
        except (MilterProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            session.closed = True
            await trio.aclose_forcefully(stream)

    async def _answer(
        self, stream: trio.abc.Stream, session: FakeMilterSession, command: MtaCommand
    ) -> bool:
        """Answer one command; False to close the connection."""
        if session.stalled and command.command is not MilterCommand.QUIT:
            return True
        if command.command is MilterCommand.MACRO:
            session.macros.update(command.macros)
            return True
        if command.command is MilterCommand.QUIT:
            return False
        if command.command in (MilterCommand.ABORT, MilterCommand.QUIT_NC):
            return True
        if command.command is MilterCommand.OPTNEG:
            session.negotiated = command.negotiate
            answer: Answer = self.negotiation
            if answer is None:
                answer = Negotiate(self.version, self.actions, self.protocol, self.macro_lists)
            return await self._send(stream, session, answer)
        stage = _STAGE_NAMES[command.command]
        entry = self.script.get(stage)
        answer = entry(command) if callable(entry) else entry
        no_reply = _NO_REPLY.get(stage)
        if answer is None and no_reply is not None and self.protocol & no_reply:
            return True
        return await self._send(stream, session, CONTINUE if answer is None else answer)

    async def _send(
        self, stream: trio.abc.Stream, session: FakeMilterSession, answer: Answer
    ) -> bool:
        if answer is HANGUP:
            return False
        if answer is STALL:
            session.stalled = True  # read and record on, answer nothing more
            return True
        if isinstance(answer, bytes):
            await stream.send_all(answer)
            return True
        if answer is None:
            answer = CONTINUE
        answers: list[MilterAnswer | Pause | bytes] = []
        if isinstance(answer, list | tuple):
            answers.extend(answer)
        else:
            answers.append(answer)  # type: ignore[arg-type]
        for item in answers:
            if isinstance(item, Pause):
                await trio.sleep(item.seconds)
            elif isinstance(item, bytes):
                await stream.send_all(item)  # a hostile milter's own bytes
            else:
                await stream.send_all(encode_response(item))
        return True
