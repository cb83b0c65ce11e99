"""One milter for one connection, over Trio: its socket, its `MilterSession`, what it
accepted, the unanswered commands held for the next write, and `MilterFailure` (unreachable,
timed out, broke the protocol).  Every wait has its deadline here; `Milters` (milters.py)
decides what a failure means.
"""

from __future__ import annotations

import contextlib
import socket

import trio

from trio_proxsmtp.protocol.errors import RemoteError
from trio_proxsmtp.protocol.message.edit import EditedMessage
from trio_proxsmtp.protocol.milter.codes import MilterProtocolError
from trio_proxsmtp.protocol.milter.messages import (
    MilterVerdict,
    MilterVerdictKind,
    Modification,
    Negotiate,
    Progress,
)
from trio_proxsmtp.protocol.milter.session import MilterSession, Stage, split_body
from trio_proxsmtp.stages.settings import MilterAddress, MilterSettings

__all__ = ["MilterClient", "MilterFailure"]

_READ_SIZE = 65536
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_UNSENT_LIMIT = 65536
# PROGRESS restarts a stage's timeout, but the stage ends this many timeouts after its
# command whatever the milter says (docs/behaviour.md §6.5): with the default
# MilterContentTimeout of 300 s, 50 minutes for one message.
_PROGRESS_LIMIT = 10
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class MilterFailure(RemoteError):
    """A milter was unreachable, timed out or broke the protocol."""


class MilterClient:
    """One milter for one connection: its socket, its session state, what it accepted."""

    def __init__(self, address: MilterAddress, settings: MilterSettings) -> None:
        self.address = address
        self.settings = settings
        self.session = MilterSession()
        self.stream: trio.abc.Stream | None = None
        self.failed = False
        self.done_for_connection = False  # it accepted the connection
        self.done_for_message = False  # it accepted the message (until the next one)
        self.in_message = False  # got MAIL and no EOM or ABORT since
        # Commands the milter does not answer (SMFIP_NR_*, ABORT) wait here and go out with
        # the next one it answers: one write, not one per header or stage.
        self.unsent = bytearray()

    @property
    def name(self) -> str:
        return self.address.text

    @property
    def active(self) -> bool:
        return not (self.failed or self.done_for_connection or self.done_for_message)

    async def open(self) -> None:
        with trio.move_on_after(self.settings.connect_timeout) as scope:
            try:
                if self.address.path is not None:
                    self.stream = await trio.open_unix_socket(self.address.path)
                else:
                    assert self.address.host is not None
                    self.stream = await trio.open_tcp_stream(self.address.host, self.address.port)
            except OSError as exc:
                raise MilterFailure(f"cannot connect: {exc}") from None
        if scope.cancelled_caught:
            raise MilterFailure("connect timed out")
        await self._exchange(self.session.negotiate(), self.settings.command_timeout)

    async def stage(
        self, stage: Stage, *args: str, timeout: float, **kwargs: object
    ) -> tuple[MilterVerdict | None, list[Modification]]:
        out = self.session.stage(stage, *args, **kwargs)  # type: ignore[arg-type]
        if not out:
            return None, []
        if self.session.awaiting is None:
            await self.send_later(out, timeout)
            return None, []
        return await self._exchange(out, timeout)

    async def send_later(self, data: bytes, timeout: float) -> None:
        """Queue bytes that get no answer; written at once past _UNSENT_LIMIT."""
        self.unsent += data
        if len(self.unsent) >= _UNSENT_LIMIT:
            await self._send(b"", timeout)

    async def _send(self, data: bytes, timeout: float) -> None:
        assert self.stream is not None
        if self.unsent:
            data, self.unsent = bytes(self.unsent + data), bytearray()
        with trio.move_on_after(timeout) as scope:
            try:
                await self.stream.send_all(data)
            except _IO_ERRORS as exc:
                raise MilterFailure(f"send failed: {exc}") from None
        if scope.cancelled_caught:
            raise MilterFailure("timed out sending")

    async def _exchange(
        self, data: bytes, timeout: float
    ) -> tuple[MilterVerdict | None, list[Modification]]:
        """Send a command and read until its final answer (a verdict or the negotiation).

        The answer is due ``timeout`` seconds after the command went out, however the milter
        spreads its packets; only PROGRESS moves that deadline, to ``timeout`` from the
        PROGRESS, and never past _PROGRESS_LIMIT timeouts from the command (docs/behaviour.md
        §6.5)."""
        assert self.stream is not None
        await self._send(data, timeout)
        modifications: list[Modification] = []
        quick_ack = self.session.awaiting is Stage.EOM  # answers of several packets
        start = trio.current_time()
        deadline, limit = start + timeout, start + _PROGRESS_LIMIT * timeout
        while True:
            if quick_ack:
                self._quick_ack()
            with trio.move_on_at(deadline) as scope:
                try:
                    chunk = await self.stream.receive_some(_READ_SIZE)
                except _IO_ERRORS as exc:
                    raise MilterFailure(f"receive failed: {exc}") from None
            if scope.cancelled_caught:
                if deadline >= limit:
                    raise MilterFailure(
                        "timed out waiting for an answer"
                        f" (PROGRESS extends a stage to {_PROGRESS_LIMIT} timeouts at most)"
                    )
                raise MilterFailure("timed out waiting for an answer")
            if not chunk:
                raise MilterFailure("the milter closed the connection")
            try:
                answers = self.session.receive(bytes(chunk))
            except MilterProtocolError as exc:
                raise MilterFailure(f"protocol error: {exc}") from None
            for answer in answers:
                if isinstance(answer, Progress):
                    deadline = min(trio.current_time() + timeout, limit)
                    continue
                if isinstance(answer, Negotiate):
                    return None, []
                if isinstance(answer, MilterVerdict):
                    return answer, modifications
                modifications.append(answer)

    def _quick_ack(self) -> None:
        """Acknowledge the milter's packets at once: libmilter writes each modification and
        the verdict separately without TCP_NODELAY, so a delayed ACK of ours would hold its
        verdict back by Nagle's algorithm (40 ms per message with OpenDKIM's signature)."""
        if _QUICKACK is not None and isinstance(self.stream, trio.SocketStream):
            with contextlib.suppress(OSError):
                self.stream.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    async def send_message(
        self, message: EditedMessage, queue_id: str
    ) -> tuple[MilterVerdict | None, list[Modification]]:
        """Headers, end of headers, body and end of message; the first verdict that does not
        continue ends it early (its modifications come only with EOM)."""
        timeout = self.settings.content_timeout
        self.in_message = True
        macros = {"i": queue_id}
        for field in message.headers:
            verdict, _ = await self.stage(Stage.HEADER, field.name, field.value, timeout=timeout)
            if verdict is not None and verdict.kind is not MilterVerdictKind.CONTINUE:
                return verdict, []
        verdict, _ = await self.stage(Stage.EOH, timeout=timeout, macros=macros)
        if verdict is not None and verdict.kind is not MilterVerdictKind.CONTINUE:
            return verdict, []
        for piece in split_body(message.body_chunks()):
            if not self.session.wants(Stage.BODY):
                break
            verdict, _ = await self.stage(Stage.BODY, data=piece, timeout=timeout)
            if verdict is not None and verdict.kind not in (
                MilterVerdictKind.CONTINUE,
                MilterVerdictKind.SKIP,
            ):
                return verdict, []
        verdict, mods = await self.stage(Stage.EOM, timeout=timeout, macros=macros)
        self.in_message = False
        self.session.skipping_body = False
        return verdict, mods

    async def close(self, *, polite: bool) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            return
        if polite and not self.failed:
            with trio.move_on_after(self.settings.command_timeout):
                with contextlib.suppress(*_IO_ERRORS):
                    await stream.send_all(bytes(self.unsent) + self.session.quit())
        await trio.aclose_forcefully(stream)
