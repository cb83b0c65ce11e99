"""CHUNKING from the client (RFC 3030; Chunking: on): the first BDAT of a message, the
commands between its chunks, each chunk's 250 and the LAST one, after which the message
goes on as a DATA message does.  Whether the current message came by BDAT decides how it
is replayed (BDAT again when the next server offers CHUNKING)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.message.summary import Status
from trio_proxsmtp.protocol.session.actions import (
    Action,
    Close,
    Log,
    ReceiveChunk,
    SendClient,
    SkipBytes,
)
from trio_proxsmtp.protocol.session.delivery import end_transaction, received, summary
from trio_proxsmtp.protocol.session.envelope import MessageFacts
from trio_proxsmtp.protocol.session.gate import ANY_VERB, Gate
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.session.wire import (
    BDAT_IN_PROGRESS,
    NEED_MAIL,
    NO_VALID_RECIPIENTS,
    NOOP_OK,
)
from trio_proxsmtp.protocol.smtp.bdat import SYNTAX_REPLY as BDAT_SYNTAX
from trio_proxsmtp.protocol.smtp.bdat import BdatSyntaxError, parse_bdat
from trio_proxsmtp.protocol.smtp.commands import Command, Verb
from trio_proxsmtp.protocol.smtp.replies import Reply

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.events import ChunkReceived
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = ["BETWEEN_CHUNKS", "bdat_size", "chunk_received", "first_bdat"]


def first_bdat(session: SessionState, command: Command) -> list[Action]:
    """The first BDAT of a message (RFC 3030): its chunks are spooled like a DATA
    message; the filter runs at LAST."""
    try:
        bdat = parse_bdat(command.argument)
    except BdatSyntaxError as exc:
        return _syntax_error(session, str(exc))
    envelope = session.envelope
    if envelope.sender is None or not envelope.recipients:
        # The chunk is read and dropped, never taken for commands.
        reply = NEED_MAIL if envelope.sender is None else NO_VALID_RECIPIENTS
        return [SkipBytes(bdat.size), SendClient(reply)]
    session.state = State.CHUNKS
    session.chunking.by_bdat = True
    session.facts = MessageFacts()
    return [ReceiveChunk(bdat.size, bdat.last)]


def _in_chunks(session: SessionState, command: Command) -> bool:
    return session.state is State.CHUNKS


def _between_chunks(session: SessionState, command: Command) -> list[Action]:
    verb = command.verb
    if verb is Verb.BDAT:
        try:
            bdat = parse_bdat(command.argument)
        except BdatSyntaxError as exc:
            return _syntax_error(session, str(exc))
        return [ReceiveChunk(bdat.size, bdat.last)]
    if verb is Verb.NOOP:
        return [SendClient(NOOP_OK)]
    if verb in (Verb.RSET, Verb.QUIT):
        # The message is abandoned: nothing went upstream yet; its spool goes with the
        # reply (the connection closes it once no message is on its way).
        end_transaction(session, count=False)
        return session.dispatch(command)
    return [SendClient(BDAT_IN_PROGRESS)]


def _syntax_error(session: SessionState, detail: str) -> list[Action]:
    """The chunk's end is unknown: the stream cannot be resynchronised (RFC 3030 §3)."""
    actions: list[Action] = [Log(logging.WARNING, detail)]
    if session.in_message:
        actions.append(summary(session, Status.FILTER_ERROR, "BDAT syntax error"))
        end_transaction(session)
    return [*actions, SendClient(BDAT_SYNTAX), Close()]


def chunk_received(session: SessionState, event: ChunkReceived) -> list[Action]:
    """Each chunk but the LAST gets its 250 here; at LAST the message goes on as a DATA
    message does."""
    if not event.last:
        session.facts.size, session.facts.receive = event.total, event.seconds
        return [SendClient(Reply.single(250, f"2.0.0 {event.size} octets received"))]
    session.state = State.DATA
    return received(session, event.total, event.seconds)


def bdat_size(command: Command) -> int:
    words = command.argument.split()
    if words and words[0].isascii() and words[0].isdigit():
        return int(words[0])
    return 0


# Between chunks only BDAT, NOOP, RSET and QUIT are taken.
BETWEEN_CHUNKS = Gate("between chunks", ANY_VERB, _in_chunks, _between_chunks)
