"""XCLIENT towards the next server (XCLIENT: on; Postfix's extension): sent once, before
the client's first command after its HELO/EHLO, when the next server offers it (assumed
after HELO, docs/behaviour.md §4.5); Postfix answers with a new greeting, so the client's
HELO/EHLO is said again (B20).  The client's own XCLIENT is refused (a gate too)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.session.actions import Action, Log, Purpose, SendClient, SendUpstream
from trio_proxsmtp.protocol.session.gate import ANY_VERB, Gate
from trio_proxsmtp.protocol.session.wire import INSUFFICIENT_AUTHORIZATION
from trio_proxsmtp.protocol.smtp.commands import Command, Verb, xtext_encode
from trio_proxsmtp.protocol.smtp.replies import Reply

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = ["CLIENT_XCLIENT", "SEND_XCLIENT", "xclient_helo_reply", "xclient_reply"]


def _line(session: SessionState) -> bytes:
    policy = session.policy
    addr = policy.client
    if policy.client_is_ipv6 and addr:
        addr = "IPv6:" + addr
    parts = [f"ADDR={xtext_encode(addr) if addr else '[UNAVAILABLE]'}"]
    if policy.xclient_name:
        parts.append(f"NAME={xtext_encode(policy.xclient_name)}")
    if session.helo_name:
        parts.append(f"HELO={xtext_encode(session.helo_name)}")
    return ("XCLIENT " + " ".join(parts) + "\r\n").encode("ascii")


def _due(session: SessionState, command: Command) -> bool:
    return session.xclient.armed(session.policy.xclient, session.helo_line)


def _send(session: SessionState, command: Command) -> list[Action]:
    # The command is dispatched only once the XCLIENT exchange is over, so that nothing it
    # changes (the state, the envelope) is seen by the swallowed replies.
    session.xclient.sent = True
    return [SendUpstream(_line(session), Purpose.XCLIENT, command)]


def xclient_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """Our XCLIENT's reply (swallowed): the HELO/EHLO again, or the waiting command."""
    assert action.command is not None
    if not reply.is_positive:
        warning = Log(logging.WARNING, f"server didn't accept XCLIENT: {reply.text}")
        return [warning, *session.dispatch(action.command)]
    assert session.helo_line is not None  # XCLIENT is only armed after HELO/EHLO
    # Postfix answers XCLIENT with a new greeting: say HELO/EHLO again (B20).
    return [SendUpstream(session.helo_line, Purpose.XCLIENT_HELO, action.command)]


def xclient_helo_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """The reply to the HELO/EHLO said again (swallowed): the waiting command goes on."""
    assert action.command is not None
    if not reply.is_positive:
        return [
            Log(logging.WARNING, f"server refused HELO after XCLIENT: {reply.text}"),
            *session.dispatch(action.command),
        ]
    return session.dispatch(action.command)


def _refuse(session: SessionState, command: Command) -> list[Action]:
    return [
        Log(logging.WARNING, "client attempted use of privileged XCLIENT feature"),
        SendClient(INSUFFICIENT_AUTHORIZATION),
    ]


def _always(session: SessionState, command: Command) -> bool:
    return True


SEND_XCLIENT = Gate("xclient first", ANY_VERB - {Verb.QUIT}, _due, _send, entry=True)
CLIENT_XCLIENT = Gate("client xclient", frozenset({Verb.XCLIENT}), _always, _refuse)
