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
milter's PROGRESS restarts it, up to 10 timeouts, docs/behaviour.md §6.5). A milter that
cannot be reached, times out or breaks the protocol is closed and MilterDefaultAction
applies from then on, for the rest of the connection: ``tempfail``/``reject`` answer every
later stage with 451/554, ``accept`` goes on without that milter. Nothing runs in the
background: cancellation (the client left) closes the milter sockets at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType

import trio

from trio_proxsmtp.protocol.message.edit import (
    MilterEnvelope,
    apply_modifications,
    read_message,
)
from trio_proxsmtp.protocol.milter.messages import MilterVerdict, MilterVerdictKind
from trio_proxsmtp.protocol.milter.session import Stage, mail_args
from trio_proxsmtp.stages.milter.client import MilterClient, MilterFailure
from trio_proxsmtp.stages.milter.decisions import (
    CONTINUE,
    FAILURE_REJECT_REPLY,
    FAILURE_TEMPFAIL_REPLY,
    REJECT_REPLY,
    TEMPFAIL_REPLY,
    EndOfMessage,
    MilterContext,
    MilterDecision,
)
from trio_proxsmtp.stages.settings import DefaultAction, MilterSettings

__all__ = ["Milters"]

log = logging.getLogger("trio_proxsmtp.milter")


class Milters:
    """All configured milters for one SMTP connection (see the module docstring)."""

    def __init__(
        self, settings: MilterSettings, logger: logging.LoggerAdapter[logging.Logger] | None = None
    ) -> None:
        """`logger`: the connection's (its lines carry the connection id)."""
        self.settings = settings
        self._log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger or log
        self._milters = [MilterClient(address, settings) for address in settings.milters]
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

    async def _fail(self, milter: MilterClient, reason: str) -> MilterDecision | None:
        milter.failed = True
        self._log.warning("milter %s: %s", milter.name, reason)
        await milter.close(polite=False)
        action = self.settings.default_action
        if action is DefaultAction.ACCEPT:
            return None
        if action is DefaultAction.TEMPFAIL:
            decision = MilterDecision(
                MilterVerdictKind.TEMPFAIL, FAILURE_TEMPFAIL_REPLY, milter.name, failed=True
            )
        else:
            decision = MilterDecision(
                MilterVerdictKind.REJECT, FAILURE_REJECT_REPLY, milter.name, failed=True
            )
        self._sticky = decision
        return decision

    def _decide(
        self, milter: MilterClient, verdict: MilterVerdict | None, *, connection: bool
    ) -> MilterDecision | None:
        """None: go on to the next milter."""
        if verdict is None or verdict.kind is MilterVerdictKind.CONTINUE:
            return None
        if verdict.kind is MilterVerdictKind.ACCEPT:
            if connection:
                milter.done_for_connection = True
            else:
                milter.done_for_message = True
            return None
        if verdict.kind is MilterVerdictKind.DISCARD:
            return MilterDecision(MilterVerdictKind.DISCARD, None, milter.name)
        if verdict.kind is MilterVerdictKind.SKIP:  # pragma: no cover - only after BODY
            return None
        default = REJECT_REPLY if verdict.kind is MilterVerdictKind.REJECT else TEMPFAIL_REPLY
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
            if decision.kind is MilterVerdictKind.DISCARD:
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
            "{if_addr}": context.daemon_address,
            "{client_addr}": context.client_address,
            "{client_port}": str(context.client_port),
            "{client_name}": context.client_name,
            "{client_ptr}": context.client_name,
            "_": f"{context.client_name} [{context.client_address}]",
            "v": "trio-proxsmtpd",
        }
        if context.daemon_port:
            self._macros["{daemon_port}"] = str(context.daemon_port)
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
        self,
        name: str,
        *,
        tls: Mapping[str, str] | None = None,
    ) -> MilterDecision:
        """After the client's HELO/EHLO, before it is answered; `tls`: the client side's
        TLS macros (stages/milter/macros.py `tls_macros`)."""
        macros = dict(tls or {})
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
        if decision.kind in (MilterVerdictKind.REJECT, MilterVerdictKind.TEMPFAIL):
            await self.abort()
        return decision

    async def rcpt(self, recipient: str, params: Sequence[str] = ()) -> MilterDecision:
        """At each RCPT TO, before it is forwarded upstream; a reject refuses that one only."""
        macros = {"{rcpt_addr}": recipient.strip("<>")}
        return await self._run_stage(Stage.RCPT, *mail_args(recipient, params), macros=macros)

    async def data(self) -> MilterDecision:
        """At DATA, before it is forwarded upstream."""
        decision = await self._run_stage(Stage.DATA, macros={"i": self._macros.get("i", "")})
        if decision.kind in (MilterVerdictKind.REJECT, MilterVerdictKind.TEMPFAIL):
            await self.abort()
        return decision

    async def message(
        self, source: Callable[[], Iterable[bytes]], envelope: MilterEnvelope
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
                verdict, mods = await milter.send_message(edited, self._macros.get("i", ""))
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
            result = MilterDecision(MilterVerdictKind.DISCARD)  # milters removed every recipient
        modified = modified or envelope != original_envelope
        return EndOfMessage(result, edited, envelope, modified)

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
