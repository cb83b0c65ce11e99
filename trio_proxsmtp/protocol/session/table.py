"""The transition table: every input the session takes, in every state it takes it, and
the states it may move to.  An input absent for the current state is our bug
(`LocalProtocolError`, sticky: protocol/session/machine.py).

The key is (state, the input's type); for an upstream reply the input is the exchange it
answers: (state, its `Purpose`) for a line, (state, `SendMessage`) for the replayed
message, (state, `ReceiveMessage`) for a streamed one.  The handler decides among the
entry's targets (a reply's content decides, the table bounds it); a move outside them is
our bug too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from trio_proxsmtp.protocol.session import (
    answers,
    chunking,
    delivery,
    events,
    inputs,
    milters,
    policy_service,
    replay,
    upstream_tls,
    xclient,
    xforward,
)
from trio_proxsmtp.protocol.session.actions import Action, Purpose, ReceiveMessage, SendMessage
from trio_proxsmtp.protocol.session.states import COMMAND_STATES, State

__all__ = ["TABLE", "Key", "Move"]

Key = tuple[State, type | Purpose]


@attrs.frozen
class Move:
    """What an input does in one state: its handler, and the states it may leave the
    session in.  An event's handler takes (session, event); a reply's takes (session,
    exchange, reply)."""

    handler: Callable[..., list[Action]]
    targets: frozenset[State]


TABLE: dict[Key, Move] = {}

_ANY = frozenset(State)
_COMMANDS_CHUNKS = COMMAND_STATES | {State.CHUNKS}
_RECEIVED = frozenset({State.FILTERING, State.MILTERING, State.REPLAY, State.MAIL})
# Where dispatching a client command may leave the session, by the state it came in: only
# in a transaction can DATA or BDAT start a message, or a refusal end one.
_DISPATCHED = {
    State.HELO: frozenset({State.HELO}),
    State.MAIL: frozenset({State.MAIL}),
    State.RCPT: frozenset({State.RCPT, State.MAIL, State.DATA, State.CHUNKS}),
    State.CHUNKS: frozenset({State.CHUNKS, State.MAIL}),
}


def _rows(
    states: Iterable[State],
    key: type | Purpose,
    handler: Callable[..., list[Action]],
    moves: Iterable[State] = (),
    *,
    stay: bool = True,
) -> None:
    for state in states:
        targets = frozenset(moves) | ({state} if stay else frozenset())
        assert (state, key) not in TABLE, (state, key)
        TABLE[(state, key)] = Move(handler, targets)


def _dispatching(
    states: Iterable[State], key: type | Purpose, handler: Callable[..., list[Action]]
) -> None:
    for state in states:
        _rows([state], key, handler, _DISPATCHED[state])


# -- the relay's inputs ------------------------------------------------------------------
_rows([State.GREETING], events.Greeting, answers.greeting, [State.HELO], stay=False)
_rows([State.GREETING], events.ClientNameKnown, inputs.client_name)
_rows({State.GREETING} | COMMAND_STATES, events.ClientTLSActive, inputs.tls_active)
_rows({State.GREETING} | COMMAND_STATES, events.UpstreamTLSActive, inputs.upstream_tls_active)
_dispatching(_COMMANDS_CHUNKS, events.ClientCommand, inputs.command)
_rows(_COMMANDS_CHUNKS, events.CommandTooLong, inputs.too_long)
_rows(_COMMANDS_CHUNKS, events.BadCommandLine, inputs.bad_line)
_rows(COMMAND_STATES, events.ClientTLSStarted, inputs.tls_started, [State.HELO], stay=False)
_dispatching(COMMAND_STATES, events.MiltersDecided, milters.milters_decided)
_dispatching(COMMAND_STATES, events.PolicyDecided, policy_service.policy_decided)
_dispatching(COMMAND_STATES, events.UpstreamTLSStarted, upstream_tls.tls_started)
_rows([State.DATA], events.MessageReceived, delivery.message_received, _RECEIVED, stay=False)
_rows(
    [State.DATA, State.CHUNKS],
    events.MessageFailed,
    delivery.message_failed,
    [State.MAIL],
    stay=False,
)
_rows([State.DATA], events.MessageStreamed, delivery.message_streamed)
_rows([State.CHUNKS], events.ChunkReceived, chunking.chunk_received, _RECEIVED)
_rows(
    [State.FILTERING],
    events.FilterDone,
    delivery.filter_done,
    _RECEIVED - {State.FILTERING},
    stay=False,
)
_rows(
    [State.MILTERING],
    events.MiltersDone,
    milters.milters_done,
    [State.REPLAY, State.MAIL],
    stay=False,
)
_rows(_ANY, events.ConnectionEnded, delivery.connection_ended, [State.MAIL])

# -- the upstream's replies, by the exchange they answer -----------------------------------
_rows(COMMAND_STATES, Purpose.COMMAND, answers.line_reply, COMMAND_STATES | {State.QUIT})
_rows(COMMAND_STATES, Purpose.AUTH_CONTINUATION, answers.auth_reply)
_dispatching(COMMAND_STATES, Purpose.XCLIENT, xclient.xclient_reply)
_dispatching(COMMAND_STATES, Purpose.XCLIENT_HELO, xclient.xclient_helo_reply)
_dispatching(COMMAND_STATES, Purpose.XFORWARD, xforward.xforward_reply)
_rows(_ANY, Purpose.RSET, answers.rset_reply)
_rows([State.REPLAY], Purpose.DATA, delivery.data_reply, [State.MAIL])
_rows(COMMAND_STATES, Purpose.SKIP_DATA, delivery.skip_data_reply, [State.DATA])
_rows([State.REPLAY], Purpose.REPLAY_ENVELOPE, replay.replay_reply, [State.MAIL])
_rows(COMMAND_STATES, Purpose.UPSTREAM_EHLO, upstream_tls.ehlo_reply, [State.MAIL])
_rows(COMMAND_STATES, Purpose.UPSTREAM_STARTTLS, upstream_tls.starttls_reply, [State.MAIL])
_rows([State.REPLAY], SendMessage, delivery.message_reply, [State.MAIL], stay=False)
_rows([State.DATA], ReceiveMessage, delivery.stream_reply, [State.MAIL], stay=False)
