"""A message from the end of the client's DATA (or LAST chunk) to its one summary line:
the size check, the filter, the hand-over to the milters, our DATA and the replay, the
next server's final reply, and the end of the transaction.  Skip: authenticated streams
the message instead (its DATA and reply are here too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.message.summary import MessageSummary, Status, refusal_status
from trio_proxsmtp.protocol.session.actions import (
    AbortMilters,
    Action,
    Purpose,
    ReceiveMessage,
    RunFilter,
    RunMilters,
    SendClient,
    SendMessage,
    SendUpstream,
    Summary,
)
from trio_proxsmtp.protocol.session.envelope import AcceptedEnvelope, MessageFacts
from trio_proxsmtp.protocol.session.limits import size_limit
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.session.wire import MESSAGE_TOO_BIG
from trio_proxsmtp.protocol.smtp.replies import Reply

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.events import (
        ConnectionEnded,
        FilterDone,
        MessageFailed,
        MessageReceived,
        MessageStreamed,
    )
    from trio_proxsmtp.protocol.session.state import SessionState

RSET = SendUpstream(b"RSET\r\n", Purpose.RSET)
# Statuses whose reason= is the reply the client got (others: the detail, for the admin).
_REFUSED_BY_REPLY = frozenset({Status.REJECTED, Status.DEFERRED, Status.DROPPED})


def message_received(session: SessionState, event: MessageReceived) -> list[Action]:
    return received(session, event.size, event.seconds)


def received(session: SessionState, size: int, seconds: float) -> list[Action]:
    """The message is spooled: too big, or on to the filter, the milters or the replay."""
    session.facts.size, session.facts.receive = size, seconds
    limit = size_limit(session)
    if limit is not None and size > limit:
        return abandon(session, MESSAGE_TOO_BIG, Status.TOO_BIG, f"size {size}")
    policy = session.policy
    if policy.filtering and not session.filter_skipped():
        session.state = State.FILTERING
        return [RunFilter()]
    if policy.milters:
        session.state = State.MILTERING
        return [RunMilters()]
    session.state = State.REPLAY
    return replay(session)


def replay(session: SessionState) -> list[Action]:
    """Send the accepted message: as BDAT when it came by BDAT and the next server offers
    CHUNKING (no DATA exchange), else DATA, its 354, then the message."""
    if session.chunking.by_bdat and session.extensions.has("CHUNKING"):
        return [SendMessage(bdat=True)]
    return [SendUpstream(b"DATA\r\n", Purpose.DATA)]


def message_failed(session: SessionState, event: MessageFailed) -> list[Action]:
    session.facts.size, session.facts.receive = event.size, event.seconds
    return abandon(session, event.reply, Status.FILTER_ERROR, event.detail)


def message_streamed(session: SessionState, event: MessageStreamed) -> list[Action]:
    exchanges = session.exchanges
    if not exchanges or exchanges[0] != ReceiveMessage(stream=True):
        raise LocalProtocolError("no message is being streamed")
    session.facts.size, session.facts.receive = event.size, event.seconds
    return []


def filter_done(session: SessionState, event: FilterDone) -> list[Action]:
    session.facts.filter = event.seconds
    session.facts.scanner = event.scanner
    if event.accepted and session.policy.milters:
        session.state = State.MILTERING  # FilterCommand first, then the milters
        return [RunMilters()]
    if event.accepted:
        session.state = State.REPLAY
        return replay(session)
    if event.reply is None:
        raise LocalProtocolError("a rejected message needs a reply")
    if session.policy.milters and event.scanner is None:
        session.decided_by = f"filter={session.policy.filter_name}"
    return abandon(session, event.reply, event.status, event.detail)


def data_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """Our DATA before the replay: 354, the message; else that is its final reply (B15:
    logged)."""
    if reply.code == 354:
        return [SendMessage()]
    return finish(session, reply, filter_status(session), rset=True)


def message_reply(session: SessionState, action: SendMessage, reply: Reply) -> list[Action]:
    """The reply to the replayed message's final "." (or its LAST chunk)."""
    # A refused BDAT chunk leaves the next server's transaction open: reset it.
    rset = action.bdat and not reply.is_positive
    return finish(session, reply, filter_status(session), rset=rset)


def skip_data_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """The client's DATA, passed through (Skip: authenticated): 354, the message streams."""
    if reply.code == 354:
        session.state = State.DATA
        session.facts = MessageFacts()
        return [SendClient(reply), ReceiveMessage(stream=True)]
    return [SendClient(reply)]


def stream_reply(session: SessionState, action: ReceiveMessage, reply: Reply) -> list[Action]:
    """The reply to the streamed message."""
    return finish(session, reply, Status.SKIPPED)


def filter_status(session: SessionState) -> Status:
    policy = session.policy
    if policy.milters and session.filter_skipped():
        return Status.SKIPPED  # Skip: authenticated skipped FilterCommand, not the milters
    if policy.milters:
        return Status.FILTERED
    return Status.FILTERED if policy.filtering else Status.PASSED


def finish(
    session: SessionState, reply: Reply, status: Status, *, rset: bool = False
) -> list[Action]:
    """The upstream answered the message (or refused its DATA): its reply is the
    client's."""
    line = summary(session, status, None, upstream=reply)
    if reply.is_positive:
        session.limits.delivered()  # HardErrorLimit counts errors between delivered messages
    end_transaction(session)
    actions: list[Action] = [AbortMilters()] if session.policy.milters else []
    actions.append(SendClient(reply))
    if rset:
        actions.append(RSET)
    actions.append(line)
    return actions


def abandon(session: SessionState, reply: Reply, status: Status, detail: str) -> list[Action]:
    """The message is not delivered: tell the client, reset the upstream's transaction."""
    if status in (Status.REJECTED, Status.DEFERRED):
        status = refusal_status(reply.code)
    text = reply.text if status in _REFUSED_BY_REPLY else detail
    line = summary(session, status, text or None)
    end_transaction(session)
    actions: list[Action] = [AbortMilters()] if session.policy.milters else []
    return [*actions, SendClient(reply), RSET, line]


def end_transaction(session: SessionState, count: bool = True) -> None:
    if count:
        session.messages += 1
    session.envelope = AcceptedEnvelope()
    session.chunking.by_bdat = False
    session.state = State.MAIL


def summary(
    session: SessionState, status: Status, reason: str | None, *, upstream: Reply | None = None
) -> Summary:
    """The message's one summary line; relay= only once the upstream answered it."""
    envelope = session.envelope
    policy = session.policy
    # The client as we were told it (docs/behaviour.md §9.2): XFORWARD ADDR= from the
    # client (Postfix before-queue), else the PROXY header's; via= the connecting address.
    client, via = policy.client, policy.peer
    if envelope.remote_addr and envelope.remote_addr != policy.client:
        client, via = envelope.remote_addr, policy.peer or policy.client
    message = MessageSummary(
        client=client,
        via=via,
        status=status,
        sender=envelope.sender,
        recipients=tuple(envelope.recipients),
        reason=reason,
        upstream=None if upstream is None else upstream.text,
        relay=None if upstream is None else session.relay,
        size=session.facts.size,
        delays=session.facts.delays,
        decided_by=session.decided_by,
        scanner=session.facts.scanner,
    )
    session.decided_by = None
    return Summary(message, None if upstream is None else upstream.code)


def connection_ended(session: SessionState, event: ConnectionEnded) -> list[Action]:
    """Nothing was delivered; a message on its way still gets its one summary line (1.10
    logged FILTER-ERROR here too)."""
    session.exchanges.clear()
    if not session.in_message:
        return []
    _cut_short(session, event.seconds)
    line = summary(session, Status.FILTER_ERROR, event.reason)
    end_transaction(session)
    return [line]


def _cut_short(session: SessionState, seconds: float) -> None:
    """The time a message cut short ran beyond its finished stages goes to the stage it
    was in: reading it (a streamed one whose reply was awaited: upstream), the filter or
    the milters, or the replay (docs/behaviour.md §9.2)."""
    facts = session.facts
    rest = seconds - (facts.receive + facts.filter + facts.upstream)
    if rest <= 0:
        return
    state = session.state
    if state is State.CHUNKS or (state is State.DATA and facts.size is None):
        facts.receive += rest
    elif state in (State.FILTERING, State.MILTERING):
        facts.filter += rest
    else:  # REPLAY, or a streamed message (DATA, its size known) awaiting its reply
        facts.upstream += rest


def carries_message(action: Action) -> bool:
    """An exchange that sends the message upstream: our DATA, the replay and its final
    ".", or the stream of skip mode. Their time is the message's upstream delay."""
    if isinstance(action, SendUpstream):
        return action.purpose is Purpose.DATA
    return isinstance(action, SendMessage) or (isinstance(action, ReceiveMessage) and action.stream)
