"""Milters over Trio: one session per client connection and milter, driven stage by stage.

`Milters` is what an SMTP connection uses: ``async with Milters(settings) as milters:``
inside the connection's nursery scope, then one call per SMTP stage (``connect``, ``helo``,
``mail``, ``rcpt``, ``data``, ``message``, ``abort``). Each returns a `MilterDecision`:
continue, reject or tempfail with the reply to give the client, or discard (answer 250 but
deliver nothing). The milters are asked in the configured order; the first that does not
continue decides. ``message`` streams the spooled message to each milter in turn, each one
seeing the message as edited by those before it, and returns the edited message and envelope.

Every wait has a deadline (MilterConnectTimeout for the connection, MilterCommandTimeout for
negotiation and each command, MilterContentTimeout for headers, body and end of message; a
milter's PROGRESS restarts it). A milter that cannot be reached, times out or breaks the
protocol is closed and MilterDefaultAction applies from then on, for the rest of the
connection: ``tempfail``/``reject`` answer every later stage with 451/554, ``accept`` goes on
without that milter. Nothing runs in the background: cancellation (the client left) closes
the milter sockets at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import attrs
import trio

from trio_proxsmtp.protocol.message.edit import (
    EditedMessage,
    Envelope,
    apply_modifications,
    read_message,
)
from trio_proxsmtp.protocol.milter import (
    MilterProtocolError,
    MilterSession,
    Modification,
    Negotiate,
    Progress,
    Stage,
    Verdict,
    VerdictKind,
    mail_args,
    split_body,
)

__all__ = [
    "EndOfMessage",
    "MilterContext",
    "MilterDecision",
    "Milters",
]

if TYPE_CHECKING:
    pass

from trio_proxsmtp.stages.settings import DefaultAction, MilterAddress, MilterSettings

log = logging.getLogger("trio_proxsmtp.milter")

REJECT_REPLY = "550 5.7.1 Command rejected"
TEMPFAIL_REPLY = "451 4.7.1 Service unavailable - try again later"
FAILURE_TEMPFAIL_REPLY = "451 4.3.5 Server configuration problem - try again later"
FAILURE_REJECT_REPLY = "554 5.7.1 Service unavailable - mail filter failed"
_READ_SIZE = 65536
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
_UNSENT_LIMIT = 65536
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


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

    kind: VerdictKind
    reply: str | None = None
    milter: str | None = None
    failed: bool = False

    @property
    def proceed(self) -> bool:
        return self.kind is VerdictKind.CONTINUE


CONTINUE = MilterDecision(VerdictKind.CONTINUE)


@attrs.frozen
class EndOfMessage:
    """The result of ``Milters.message``: the decision and what to send upstream."""

    decision: MilterDecision
    message: EditedMessage
    envelope: Envelope
    modified: bool  # a milter changed the message or the envelope


class MilterFailure(Exception):
    """A milter was unreachable, timed out or broke the protocol."""


class _Milter:
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
    ) -> tuple[Verdict | None, list[Modification]]:
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
    ) -> tuple[Verdict | None, list[Modification]]:
        """Send a command and read until its final answer (a verdict or the negotiation)."""
        assert self.stream is not None
        await self._send(data, timeout)
        modifications: list[Modification] = []
        quick_ack = self.session.awaiting is Stage.EOM  # answers of several packets
        while True:
            if quick_ack:
                self._quick_ack()
            with trio.move_on_after(timeout) as scope:
                try:
                    chunk = await self.stream.receive_some(_READ_SIZE)
                except _IO_ERRORS as exc:
                    raise MilterFailure(f"receive failed: {exc}") from None
            if scope.cancelled_caught:
                raise MilterFailure("timed out waiting for an answer")
            if not chunk:
                raise MilterFailure("the milter closed the connection")
            try:
                answers = self.session.receive(bytes(chunk))
            except MilterProtocolError as exc:
                raise MilterFailure(f"protocol error: {exc}") from None
            for answer in answers:
                if isinstance(answer, Progress):
                    continue  # the next read gets a fresh deadline
                if isinstance(answer, Negotiate):
                    return None, []
                if isinstance(answer, Verdict):
                    return answer, modifications
                modifications.append(answer)

    def _quick_ack(self) -> None:
        """Acknowledge the milter's packets at once: libmilter writes each modification and
        the verdict separately without TCP_NODELAY, so a delayed ACK of ours would hold its
        verdict back by Nagle's algorithm (40 ms per message with OpenDKIM's signature)."""
        if _QUICKACK is not None and isinstance(self.stream, trio.SocketStream):
            with contextlib.suppress(OSError):
                self.stream.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    async def close(self, *, polite: bool) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            return
        if polite and not self.failed:
            with trio.move_on_after(self.settings.command_timeout):
                with contextlib.suppress(*_IO_ERRORS):
                    await stream.send_all(bytes(self.unsent) + self.session.quit())
        await trio.aclose_forcefully(stream)


class Milters:
    """All configured milters for one SMTP connection (see the module docstring)."""

    def __init__(self, settings: MilterSettings) -> None:
        self.settings = settings
        self._milters = [_Milter(address, settings) for address in settings.milters]
        self._sticky: MilterDecision | None = None  # connection-level reject/tempfail/failure
        self._discard: MilterDecision | None = None  # the message will be discarded
        self._session_discard: MilterDecision | None = None  # ... and every later one
        self._macros: dict[str, str] = {}

    async def __aenter__(self) -> Milters:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(polite=exc_type is None)

    @property
    def configured(self) -> bool:
        return bool(self._milters)

    # --- failures and verdicts -----------------------------------------------------------

    async def _fail(self, milter: _Milter, reason: str) -> MilterDecision | None:
        milter.failed = True
        log.warning("milter %s: %s", milter.name, reason)
        await milter.close(polite=False)
        action = self.settings.default_action
        if action is DefaultAction.ACCEPT:
            return None
        if action is DefaultAction.TEMPFAIL:
            decision = MilterDecision(
                VerdictKind.TEMPFAIL, FAILURE_TEMPFAIL_REPLY, milter.name, failed=True
            )
        else:
            decision = MilterDecision(
                VerdictKind.REJECT, FAILURE_REJECT_REPLY, milter.name, failed=True
            )
        self._sticky = decision
        return decision

    def _decide(
        self, milter: _Milter, verdict: Verdict | None, *, connection: bool
    ) -> MilterDecision | None:
        """None: go on to the next milter."""
        if verdict is None or verdict.kind is VerdictKind.CONTINUE:
            return None
        if verdict.kind is VerdictKind.ACCEPT:
            if connection:
                milter.done_for_connection = True
            else:
                milter.done_for_message = True
            return None
        if verdict.kind is VerdictKind.DISCARD:
            return MilterDecision(VerdictKind.DISCARD, None, milter.name)
        if verdict.kind is VerdictKind.SKIP:  # pragma: no cover - only after BODY
            return None
        default = REJECT_REPLY if verdict.kind is VerdictKind.REJECT else TEMPFAIL_REPLY
        decision = MilterDecision(verdict.kind, verdict.reply or default, milter.name)
        if connection:
            self._sticky = decision
        return decision

    async def _run_stage(
        self,
        stage: Stage,
        *args: str,
        macros: Mapping[str, str] | None = None,
        connection: bool = False,
        **kwargs: object,
    ) -> MilterDecision:
        if self._sticky is not None:
            return self._sticky
        if self._discard is not None and stage in (Stage.RCPT, Stage.DATA):
            return CONTINUE  # the message is discarded anyway: nothing more to ask
        for milter in self._milters:
            if not milter.active:
                continue
            try:
                verdict, _ = await milter.stage(
                    stage,
                    *args,
                    timeout=self.settings.command_timeout,
                    macros=macros,
                    **kwargs,
                )
            except MilterFailure as exc:
                failure = await self._fail(milter, f"{stage.value}: {exc}")
                if failure is not None:
                    return failure
                continue
            if stage is Stage.MAIL:
                milter.in_message = True
            decision = self._decide(milter, verdict, connection=connection)
            if decision is None:
                continue
            if decision.kind is VerdictKind.DISCARD:
                # Postfix: the command succeeds, the message is dropped at its end.
                if connection:
                    self._session_discard = decision
                    self._sticky = None
                self._discard = decision
                return CONTINUE
            return decision
        return CONTINUE

    # --- the stages -------------------------------------------------------------------------

    async def connect(self, context: MilterContext) -> MilterDecision:
        """At the start of the SMTP session, before the banner is answered."""
        self._macros = {
            "j": context.hostname,
            "{daemon_name}": context.daemon_name,
            "{daemon_addr}": context.daemon_address,
            "{daemon_port}": str(context.daemon_port),
            "{client_addr}": context.client_address,
            "{client_port}": str(context.client_port),
            "{client_name}": context.client_name,
            "{client_ptr}": context.client_name,
            "_": f"{context.client_name} [{context.client_address}]",
            "v": "trio-proxsmtpd",
        }
        for milter in self._milters:
            try:
                await milter.open()
            except MilterFailure as exc:
                failure = await self._fail(milter, f"connect: {exc}")
                if failure is not None:
                    return failure
        port = 0 if context.unix else context.client_port  # family() is "L" then
        connect = (context.client_name, context.family(), port, context.client_address)
        return await self._run_stage(
            Stage.CONNECT, macros=self._macros, connection=True, connect=connect
        )

    async def helo(
        self, name: str, *, tls_version: str | None = None, cipher: str | None = None
    ) -> MilterDecision:
        """After the client's HELO/EHLO, before it is answered."""
        macros = {}
        if tls_version:
            macros["{tls_version}"] = tls_version
        if cipher:
            macros["{cipher}"] = cipher
        return await self._run_stage(Stage.HELO, name, macros=macros, connection=True)

    async def mail(
        self,
        sender: str,
        params: Sequence[str] = (),
        *,
        queue_id: str = "",
        auth_authen: str | None = None,
        auth_type: str | None = None,
    ) -> MilterDecision:
        """At MAIL FROM, before it is forwarded upstream (a reject is the client's answer)."""
        self._discard = self._session_discard
        for milter in self._milters:
            milter.done_for_message = False
        macros = {"{mail_addr}": sender.strip("<>"), "i": queue_id}
        if auth_authen:
            macros["{auth_authen}"] = auth_authen
        if auth_type:
            macros["{auth_type}"] = auth_type
        self._macros["i"] = queue_id
        decision = await self._run_stage(Stage.MAIL, *mail_args(sender, params), macros=macros)
        if decision.kind in (VerdictKind.REJECT, VerdictKind.TEMPFAIL):
            await self.abort()
        return decision

    async def rcpt(self, recipient: str, params: Sequence[str] = ()) -> MilterDecision:
        """At each RCPT TO, before it is forwarded upstream; a reject refuses that one only."""
        macros = {"{rcpt_addr}": recipient.strip("<>")}
        return await self._run_stage(Stage.RCPT, *mail_args(recipient, params), macros=macros)

    async def data(self) -> MilterDecision:
        """At DATA, before it is forwarded upstream."""
        decision = await self._run_stage(Stage.DATA, macros={"i": self._macros.get("i", "")})
        if decision.kind in (VerdictKind.REJECT, VerdictKind.TEMPFAIL):
            await self.abort()
        return decision

    async def message(
        self, source: Callable[[], Iterable[bytes]], envelope: Envelope
    ) -> EndOfMessage:
        """The spooled message (``source()`` yields it, CRLF, unstuffed), after DATA's end.

        Each milter gets headers, end of headers, body and end of message, and its
        modifications are applied before the next milter sees the message.
        """
        edited = read_message(source)
        original_envelope = envelope
        if self._sticky is not None or self._discard is not None:
            decision = self._sticky or self._discard
            assert decision is not None
            await self.abort()
            return EndOfMessage(decision, edited, envelope, modified=False)
        modified = False
        result = CONTINUE
        for milter in self._milters:
            if not milter.active:
                continue
            try:
                verdict, mods = await self._send_message(milter, edited)
            except MilterFailure as exc:
                failure = await self._fail(milter, f"message: {exc}")
                if failure is not None:
                    result = failure
                    break
                continue
            if mods:
                try:
                    edited, envelope = apply_modifications(edited, envelope, mods)
                except ValueError as exc:
                    failure = await self._fail(milter, f"bad modification: {exc}")
                    if failure is not None:
                        result = failure
                        break
                    continue
                modified = True
            decision = self._decide(milter, verdict, connection=False)
            if decision is not None:
                result = decision
                break
        await self.abort()  # milters that stopped early; resets the message state of all
        if result.proceed and not envelope.recipients:
            result = MilterDecision(VerdictKind.DISCARD)  # milters removed every recipient
        modified = modified or envelope != original_envelope
        return EndOfMessage(result, edited, envelope, modified)

    async def _send_message(
        self, milter: _Milter, message: EditedMessage
    ) -> tuple[Verdict | None, list[Modification]]:
        timeout = self.settings.content_timeout
        milter.in_message = True
        queue_id = {"i": self._macros.get("i", "")}
        for field in message.headers:
            verdict, _ = await milter.stage(Stage.HEADER, field.name, field.value, timeout=timeout)
            if verdict is not None and verdict.kind is not VerdictKind.CONTINUE:
                return verdict, []
        verdict, _ = await milter.stage(Stage.EOH, timeout=timeout, macros=queue_id)
        if verdict is not None and verdict.kind is not VerdictKind.CONTINUE:
            return verdict, []
        for piece in split_body(message.body_chunks()):
            if not milter.session.wants(Stage.BODY):
                break
            verdict, _ = await milter.stage(Stage.BODY, data=piece, timeout=timeout)
            if verdict is not None and verdict.kind not in (VerdictKind.CONTINUE, VerdictKind.SKIP):
                return verdict, []
        verdict, mods = await milter.stage(Stage.EOM, timeout=timeout, macros=queue_id)
        milter.in_message = False
        milter.session.skipping_body = False
        return verdict, mods

    async def abort(self) -> None:
        """The transaction ended without a message (RSET, rejected MAIL, client left)."""
        for milter in self._milters:
            milter.done_for_message = False
            if milter.stream is None or milter.failed or milter.done_for_connection:
                continue
            if not milter.in_message:
                milter.session.skipping_body = False
                continue
            milter.in_message = False
            try:
                await milter.send_later(milter.session.abort(), self.settings.command_timeout)
            except MilterFailure as exc:
                await self._fail(milter, f"abort: {exc}")

    async def close(self, *, polite: bool = True) -> None:
        """QUIT to each milter and close; cancellation-safe (sockets close regardless)."""
        for milter in self._milters:
            try:
                await milter.close(polite=polite)
            except BaseException:
                for other in self._milters:
                    if other.stream is not None:
                        await trio.aclose_forcefully(other.stream)
                        other.stream = None
                raise
