"""XFORWARD towards the next server (XForward: on; Postfix's extension, XFORWARD_README):
the proxy says who the client is before each of the client's MAIL commands, so after each
EHLO, each RSET and each finished transaction, as Postfix's own SMTP client does (its
smtpd forgets the attributes at the end of a transaction).  Only when the next server
advertises XFORWARD, and only the attributes it names after the keyword: NAME, ADDR,
PORT, PROTO, HELO and SOURCE (REMOTE, or LOCAL for a loopback or ConnectionLimitExceptions
client), xtext-encoded, each within Postfix's limits, each line within 512 bytes (several
XFORWARD commands when needed).  docs/behaviour.md §11.12.

Under XForward: on the client's own XFORWARD is refused and never passed on (it could
claim any address), and the keyword is not offered to it.  A refusal of ours answers the
waiting MAIL with 451 4.7.0 (the message never goes out under the proxy's own identity)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.session.actions import Action, Log, Purpose, SendClient, SendUpstream
from trio_proxsmtp.protocol.session.gate import Gate
from trio_proxsmtp.protocol.session.wire import INSUFFICIENT_AUTHORIZATION
from trio_proxsmtp.protocol.session.xclient import (
    UNAVAILABLE,
    address_value,
    helo_value,
    host_name,
    pack,
    port_value,
)
from trio_proxsmtp.protocol.smtp.commands import Command, Verb
from trio_proxsmtp.protocol.smtp.replies import Reply

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = [
    "CLIENT_XFORWARD",
    "SEND_XFORWARD",
    "XFORWARD_REFUSED",
    "xforward_lines",
    "xforward_reply",
]

XFORWARD_REFUSED = Reply.single(451, "4.7.0 Error: the next server refused XFORWARD")


def xforward_lines(session: SessionState) -> tuple[list[bytes], list[Action]]:
    """Our XFORWARD lines (usually one) and a note for each value sent as [UNAVAILABLE]."""
    policy = session.policy
    offered = session.xforward.attributes
    notes: list[Action] = []
    pieces: list[tuple[str, str]] = []
    if "NAME" in offered:
        name = host_name(policy.xclient_name) if policy.xclient_name else UNAVAILABLE
        if name is None:
            notes.append(Log(logging.INFO, f"XFORWARD NAME= sent as {UNAVAILABLE}: bad name"))
        pieces.append(("NAME", name or UNAVAILABLE))
    if "ADDR" in offered:
        pieces.append(("ADDR", address_value(policy.client, policy.client_is_ipv6)))
    if "PORT" in offered:
        pieces.append(("PORT", port_value(policy.client_port)))
    if "PROTO" in offered:
        pieces.append(("PROTO", session.protocol_name or UNAVAILABLE))
    if "HELO" in offered:
        helo = helo_value(session.helo_name) if session.helo_name else UNAVAILABLE
        if helo is None:
            notes.append(Log(logging.INFO, f"XFORWARD HELO= sent as {UNAVAILABLE}: too long"))
        pieces.append(("HELO", helo or UNAVAILABLE))
    if "SOURCE" in offered:
        pieces.append(("SOURCE", "LOCAL" if policy.client_local else "REMOTE"))
    return pack("XFORWARD", pieces, notes), notes


def _due(session: SessionState, command: Command) -> bool:
    return session.xforward.armed(session.policy.xforward, command)


def _send(session: SessionState, command: Command) -> list[Action]:
    # The MAIL waits until the XFORWARD exchange is over, then meets the other gates.
    session.xforward.sent_for = command
    lines, notes = xforward_lines(session)
    if not lines:  # it lists nothing we know: nothing to say
        return [*notes, *session.dispatch(command)]
    first, *rest = lines
    session.xforward.lines.extend(rest)
    return [*notes, SendUpstream(first, Purpose.XFORWARD, command)]


def xforward_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """Our XFORWARD's reply (swallowed): the next line, or the waiting MAIL."""
    assert action.command is not None
    if not reply.is_positive:
        session.xforward.lines.clear()
        return [
            Log(logging.ERROR, f"next server refused XFORWARD: {reply.text}"),
            SendClient(XFORWARD_REFUSED),
        ]
    if session.xforward.lines:
        line = session.xforward.lines.popleft()
        return [SendUpstream(line, Purpose.XFORWARD, action.command)]
    return session.dispatch(action.command)


def _ours(session: SessionState, command: Command) -> bool:
    return session.policy.xforward


def _refuse(session: SessionState, command: Command) -> list[Action]:
    return [
        Log(logging.WARNING, "refused the client's XFORWARD (XForward: on)"),
        SendClient(INSUFFICIENT_AUTHORIZATION),
    ]


SEND_XFORWARD = Gate("xforward", frozenset({Verb.MAIL}), _due, _send)
CLIENT_XFORWARD = Gate("client xforward", frozenset({Verb.XFORWARD}), _ours, _refuse)
