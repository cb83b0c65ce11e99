"""The milters' stages in the session (Milters: configured): the client commands they are
asked about before anything else happens to them (HELO/EHLO, MAIL, RCPT, DATA), their
answer to each, and their verdict on the message.  The envelope they change is replayed
upstream by protocol/session/replay.py."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.message.summary import Status, refusal_status
from trio_proxsmtp.protocol.milter.messages import MilterVerdictKind
from trio_proxsmtp.protocol.session.actions import (
    AbortMilters,
    Action,
    AskMilters,
    Log,
    Purpose,
    SendClient,
    SendUpstream,
)
from trio_proxsmtp.protocol.session.delivery import RSET, abandon, end_transaction, replay, summary
from trio_proxsmtp.protocol.session.envelope import AcceptedEnvelope
from trio_proxsmtp.protocol.session.gate import Gate
from trio_proxsmtp.protocol.session.replay import envelope_lines
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.session.wire import MILTER_DISCARDED
from trio_proxsmtp.protocol.session.xforward import xforward_lines
from trio_proxsmtp.protocol.smtp.commands import Command, Verb
from trio_proxsmtp.protocol.smtp.replies import LOCAL_ERROR

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.events import MiltersDecided, MiltersDone
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = ["ASK_MILTERS", "RSET_MILTERS", "asks", "milters_decided", "milters_done"]

# The client commands the milters are asked about before they go any further.
_MILTER_VERBS = frozenset({Verb.HELO, Verb.EHLO, Verb.MAIL, Verb.RCPT, Verb.DATA})


def asks(session: SessionState, command: Command) -> bool:
    """Whether this command goes to the milters first (once: not when they passed it)."""
    return (
        session.policy.milters
        and command.verb in _MILTER_VERBS
        and session.milter_passed is not command
    )


def _ask(session: SessionState, command: Command) -> list[Action]:
    return [AskMilters(command)]


def _milters_on(session: SessionState, command: Command) -> bool:
    return session.policy.milters


def _reset(session: SessionState, command: Command) -> list[Action]:
    return [AbortMilters(), SendUpstream(command.line, Purpose.COMMAND, command)]


def milters_decided(session: SessionState, event: MiltersDecided) -> list[Action]:
    """The milters' answer to a client command: it goes on, or their reply answers it."""
    command = event.action.command
    kind, reply = event.kind, event.reply
    if kind in (MilterVerdictKind.CONTINUE, MilterVerdictKind.ACCEPT, MilterVerdictKind.DISCARD):
        session.milter_passed = command
        return session.dispatch(command)
    if reply is None:
        raise LocalProtocolError("a refusal by a milter needs a reply")
    log = Log(logging.INFO, f"milter {event.milter} refused {command.verb.value}: {reply.text}")
    if command.verb is not Verb.DATA:
        return [log, SendClient(reply)]
    # At DATA the transaction is over: the upstream's is reset, the summary says why.
    session.decided_by = f"milter={event.milter}"
    line = summary(session, refusal_status(reply.code), reply.text)
    session.envelope = AcceptedEnvelope()
    session.state = State.MAIL
    return [log, SendClient(reply), RSET, line]


def milters_done(session: SessionState, event: MiltersDone) -> list[Action]:
    """The milters' verdict on the message. CONTINUE with an envelope: the milters changed
    it, so the upstream transaction is made again (RSET, MAIL, RCPT...)."""
    kind, reply = event.kind, event.reply
    if event.milter is not None:
        session.decided_by = f"milter={event.milter}"
    if kind is MilterVerdictKind.DISCARD:
        line = summary(session, Status.DROPPED, "discarded by a milter")
        end_transaction(session)
        return [SendClient(MILTER_DISCARDED), RSET, line]
    if kind in (MilterVerdictKind.REJECT, MilterVerdictKind.TEMPFAIL):
        if reply is None:
            raise LocalProtocolError("a refusal by a milter needs a reply")
        status = Status.FILTER_ERROR if event.failed else refusal_status(reply.code)
        return abandon(session, reply, status, f"milter failed: {reply.text}")
    session.decided_by = None  # delivered: nobody refused it
    session.state = State.REPLAY
    if event.envelope is None:
        return replay(session)
    try:
        lines = envelope_lines(event.envelope)
    except ValueError as exc:
        return abandon(session, LOCAL_ERROR, Status.FILTER_ERROR, str(exc))
    envelope = session.envelope
    envelope.sender = event.envelope.sender or "<>"
    envelope.recipients = []  # those the upstream accepts, as they come
    envelope.recipient_params = []
    if session.xforward.armed(session.policy.xforward, None):
        # The RSET makes the next server forget our XFORWARD: said again before MAIL.
        xforward, _notes = xforward_lines(session)  # (noted when first sent for this MAIL)
        lines = [*xforward, *lines]
    session.replay.start(lines)
    return [SendUpstream(b"RSET\r\n", Purpose.REPLAY_ENVELOPE)]


ASK_MILTERS = Gate("milters", _MILTER_VERBS, asks, _ask)
# RSET ends the milters' transaction too.
RSET_MILTERS = Gate("rset milters", frozenset({Verb.RSET}), _milters_on, _reset)
