"""The stages between the spool and the replay, for one `Transaction`: FilterCommand (a
command, or an SMTP server with `FilterType: smtp`), then the native scanners, then the
milters (docs/behaviour.md §6.5, §11.16, §11.17).  Each returns the session's next actions;
none decides."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from trio_proxsmtp.protocol.message.edit import MilterEnvelope, Recipient, bare_address
from trio_proxsmtp.protocol.message.summary import Status
from trio_proxsmtp.protocol.scanners.verdict import Outcome
from trio_proxsmtp.protocol.session.actions import Action
from trio_proxsmtp.protocol.session.events import FilterDone, MiltersDone
from trio_proxsmtp.protocol.smtp.replies import LOCAL_ERROR, reply_from_text
from trio_proxsmtp.relay.filter_environment import message_environment
from trio_proxsmtp.stages.filter.run import run_filter
from trio_proxsmtp.stages.filter.verdict import FilterVerdict, FilterVerdictKind
from trio_proxsmtp.stages.milter.milters import Milters
from trio_proxsmtp.stages.scanners.headers import with_headers
from trio_proxsmtp.stages.scanners.runner import run_scanners
from trio_proxsmtp.stages.settings import FilterType
from trio_proxsmtp.stages.smtp_filter import SmtpEnvelope, run_smtp_filter

if TYPE_CHECKING:
    from trio_proxsmtp.relay.transaction import Transaction

__all__ = ["run_filter_stage", "run_milters_stage"]


async def run_filter_stage(tx: Transaction) -> list[Action]:
    """FilterCommand (unless only scanners are set), then the scanners on what it let go."""
    started = trio.current_time()
    if tx.settings.filter is not None:
        async with tx.client.watch(tx.left), tx.upstream.keepalives():
            verdict = await _filter(tx)
        tx.metrics.filter_ran(trio.current_time() - started)
        tx.log.debug("filter verdict: %s (%s)", verdict.kind.name, verdict.detail)
        if verdict.kind is not FilterVerdictKind.ACCEPT:
            return _refused(tx, verdict, trio.current_time() - started)
        assert verdict.message is not None
        if verdict.message is not tx.spool:
            tx.output = verdict.message
    if not tx.settings.scanners or not tx.settings.scanners.scanners:
        return tx.session.handle(
            FilterDone(True, None, Status.FILTERED, seconds=trio.current_time() - started)
        )
    return await _scan(tx, started)


async def _filter(tx: Transaction) -> FilterVerdict:
    spec = tx.settings.filter
    assert tx.spool is not None and spec is not None
    envelope = tx.session.envelope
    if spec.mode is FilterType.SMTP:
        smtp_envelope = SmtpEnvelope(
            sender=bare_address(envelope.sender or ""),
            recipients=[bare_address(rcpt) for rcpt in envelope.recipients],
            client_address=envelope.remote_addr or tx.client.info.client or None,
            client_helo=envelope.remote_helo or tx.session.helo_name,
        )
        return await run_smtp_filter(spec, tx.spool, smtp_envelope)
    env = message_environment(
        tx.session, tx.client, tx.upstream.address, spec.temp_directory, tx.log
    )
    return await run_filter(spec, tx.spool, env, log=tx.log, size_limit=tx.session.size_limit)


def _refused(tx: Transaction, verdict: FilterVerdict, seconds: float) -> list[Action]:
    if verdict.kind is FilterVerdictKind.ERROR:
        tx.log.error("filter command failed: %s", verdict.detail)
        tx.metrics.filter_failed("timeout" if verdict.timed_out else "error")
        outcome = Status.FILTER_ERROR
    else:
        outcome = Status.DROPPED if verdict.kind is FilterVerdictKind.DROP else Status.REJECTED
    assert verdict.reply is not None
    return tx.session.handle(
        FilterDone(False, verdict.reply, outcome, verdict.detail, seconds=seconds)
    )


async def _scan(tx: Transaction, started: float) -> list[Action]:
    """The scanners on the message as FilterCommand left it; their header fields make a
    new output spool (what the milters and the next server see)."""
    settings = tx.settings.scanners
    message = tx.output or tx.spool
    assert settings is not None and message is not None
    size = message.size
    async with tx.client.watch(tx.left), tx.upstream.keepalives():
        combined = await run_scanners(
            settings, message.chunks, size, log=tx.log, metrics=tx.metrics
        )
    seconds = trio.current_time() - started
    tx.log.debug("scanners: %s (%s)", combined.outcome.value, combined.decided)
    if combined.outcome is not Outcome.ACCEPT:
        assert combined.reply is not None
        status = Status.FILTER_ERROR if combined.outcome is Outcome.TEMPFAIL else Status.REJECTED
        return tx.session.handle(
            FilterDone(
                False,
                combined.reply,
                status,
                "scanner refused" if combined.outcome is Outcome.REJECT else "scanner failed",
                seconds=seconds,
                scanner=combined.decided,
            )
        )
    if combined.headers:
        try:
            output = with_headers(message, combined.headers, tx.settings.temp_directory)
        except OSError as exc:
            tx.log.error("couldn't write cache file: %s", exc)
            return tx.session.handle(
                FilterDone(False, LOCAL_ERROR, Status.FILTER_ERROR, str(exc), seconds=seconds)
            )
        if tx.output is not None:
            tx.output.close()
        tx.output = output
    return tx.session.handle(
        FilterDone(True, None, Status.FILTERED, seconds=seconds, scanner=combined.decided)
    )


async def run_milters_stage(tx: Transaction, milters: Milters) -> list[Action]:
    """End of message for the milters (after FilterCommand and the scanners: they see what
    goes out); their edits are kept for the replay and a changed envelope goes to the
    session."""
    message = tx.output or tx.spool
    assert message is not None
    session_envelope = tx.session.envelope
    params = session_envelope.recipient_params
    recipients = tuple(
        Recipient(bare_address(rcpt), params[i] if i < len(params) else ())
        for i, rcpt in enumerate(session_envelope.recipients)
    )
    sender = session_envelope.sender or ""
    envelope = MilterEnvelope(bare_address(sender), recipients, session_envelope.sender_params)
    async with tx.client.watch(tx.left), tx.upstream.keepalives():
        result = await milters.message(message.chunks, envelope)
    decision = result.decision
    tx.log.debug("milters: %s (%s)", decision.kind.name, decision.milter or "all")
    changed: MilterEnvelope | None = None
    if result.modified:
        tx.edited = result.message
        if result.envelope != envelope:
            changed = result.envelope
    reply = reply_from_text(decision.reply) if decision.reply else None
    return tx.session.handle(
        MiltersDone(decision.kind, reply, decision.milter, changed, failed=decision.failed)
    )
