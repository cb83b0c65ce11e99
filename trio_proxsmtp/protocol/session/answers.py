"""The next server's replies to the client's own commands (and to our RSET): relayed,
rewritten where needed (the banner, HELO, EHLO and the keywords the proxy changes), and
what they change in the session: the state, the envelope, the extensions, AUTH."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.session.actions import (
    AbortMilters,
    Action,
    Close,
    Log,
    SendClient,
    SendUpstream,
)
from trio_proxsmtp.protocol.session.envelope import AcceptedEnvelope, mailbox
from trio_proxsmtp.protocol.session.extensions import EXTENSIONS
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.session.xclient import ASSUMED_ATTRIBUTES, offered_attributes
from trio_proxsmtp.protocol.smtp.commands import Command, Verb, xforward_value
from trio_proxsmtp.protocol.smtp.ehlo import (
    parse_extensions,
    rewrite_banner,
    rewrite_ehlo_reply,
    rewrite_helo_reply,
)
from trio_proxsmtp.protocol.smtp.replies import Reply

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.events import Greeting
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = ["auth_reply", "command_reply", "greeting", "line_reply", "rset_reply"]

# The state a positive reply to a client command moves to (others keep the state; RSET is
# the one conditional move, back from RCPT to MAIL).
_AFTER_POSITIVE = {Verb.EHLO: State.MAIL, Verb.HELO: State.MAIL, Verb.MAIL: State.RCPT}


def greeting(session: SessionState, event: Greeting) -> list[Action]:
    session.relay = event.relay
    session.state = State.HELO
    return [SendClient(rewrite_banner(event.reply))]


def line_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """The reply to a client command we forwarded."""
    assert action.command is not None
    return command_reply(session, action.command, reply)


def auth_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """The reply to an AUTH continuation line."""
    return session.auth.reply(reply)


def rset_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """Our own RSET (swallowed)."""
    if not reply.is_positive:
        return [Log(logging.WARNING, f"server refused RSET: {reply.text}")]
    return []


def command_reply(session: SessionState, command: Command, reply: Reply) -> list[Action]:
    verb = command.verb
    if verb is Verb.QUIT:
        session.state = State.QUIT
        return [SendClient(reply), Close()]
    if verb is Verb.AUTH:
        return session.auth.command_reply(reply)
    actions = session.auth.sans_auth_success(reply)
    if not reply.is_positive:
        if verb is Verb.MAIL and session.policy.milters:
            actions.append(AbortMilters())  # the milters saw a MAIL that did not happen
        actions.append(SendClient(reply))
        return actions
    session.state = _AFTER_POSITIVE.get(verb, session.state)
    envelope = session.envelope
    if verb is Verb.EHLO or verb is Verb.HELO:
        session.envelope = AcceptedEnvelope()
        session.helo_line = command.line
        session.helo_name = command.argument.split(None, 1)[0] if command.argument else ""
        if verb is Verb.EHLO:
            session.extensions = parse_extensions(reply)
            if session.extensions.has("XCLIENT"):
                session.xclient.supported = session.xclient.advertised = True
                session.xclient.attributes = offered_attributes(reply, "XCLIENT")
            session.xforward.attributes = offered_attributes(reply, "XFORWARD")
            reply = rewrite_ehlo_reply(reply)
            for extension in EXTENSIONS:
                reply = extension.advertise(session, reply)
        else:
            session.xclient.supported = True  # assumed for HELO (docs/behaviour.md §4.5)
            session.xclient.attributes = ASSUMED_ATTRIBUTES
            session.xforward.attributes = frozenset()
            reply = rewrite_helo_reply(reply)
    elif verb is Verb.MAIL:
        fresh = AcceptedEnvelope(remote_addr=envelope.remote_addr, remote_helo=envelope.remote_helo)
        fresh.sender = mailbox(command, "FROM")
        fresh.sender_params = command.params
        session.envelope = fresh
    elif verb is Verb.RCPT:
        if session.state is State.RCPT:
            envelope.recipients.append(mailbox(command, "TO"))
            envelope.recipient_params.append(command.params)
    elif verb is Verb.RSET:
        session.envelope = AcceptedEnvelope()
        if session.state is State.RCPT:
            session.state = State.MAIL
    elif verb is Verb.XFORWARD:
        for name, value in command.attributes:
            if name == "ADDR":
                envelope.remote_addr = xforward_value(value)
            elif name == "HELO":
                envelope.remote_helo = xforward_value(value)
    actions.append(SendClient(reply))
    return actions
