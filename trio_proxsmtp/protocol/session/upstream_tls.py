"""TLS towards the next server (OutTLS: may/encrypt, docs/behaviour.md §11): at the
client's first HELO/EHLO, our own EHLO, then STARTTLS if offered, the handshake, and the
client's HELO/EHLO over TLS; under encrypt nothing of the client's goes upstream in plain
text (a gate), under may the session goes on in plain text.  OutTLS: implicit is TLS from
the first byte (the `UpstreamTLSActive` event)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.session.actions import (
    Action,
    Close,
    Log,
    Purpose,
    SendClient,
    SendUpstream,
    StartUpstreamTLS,
)
from trio_proxsmtp.protocol.session.answers import command_reply
from trio_proxsmtp.protocol.session.gate import ANY_VERB, Gate
from trio_proxsmtp.protocol.session.wire import NEED_HELO, UPSTREAM_TLS_UNAVAILABLE
from trio_proxsmtp.protocol.smtp.commands import Command, Verb
from trio_proxsmtp.protocol.smtp.ehlo import Extensions, parse_extensions
from trio_proxsmtp.protocol.smtp.replies import Reply

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.events import UpstreamTLSStarted
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = [
    "ENCRYPT_FIRST",
    "UPGRADE",
    "ehlo_reply",
    "starttls_reply",
    "tls_started",
]


def _due(session: SessionState, command: Command) -> bool:
    machine = session.outtls
    return session.policy.upstream_starttls and not machine.active and not machine.tried


def _upgrade(session: SessionState, command: Command) -> list[Action]:
    """The client's first HELO/EHLO: first our own EHLO (an EHLO even for a HELO), to
    learn whether the next server offers STARTTLS (RFC 3207)."""
    session.outtls.tried = True
    if command.verb is Verb.EHLO:
        line = command.line
    else:
        name = command.argument.split(None, 1)[0] if command.argument.strip() else ""
        line = f"EHLO {name or 'smtp.passthru'}\r\n".encode("utf-8", "surrogateescape")
    return [SendUpstream(line, Purpose.UPSTREAM_EHLO, command)]


def ehlo_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """The reply to our EHLO: STARTTLS if offered."""
    command = action.command
    assert command is not None
    if reply.is_positive and parse_extensions(reply).has("STARTTLS"):
        session.outtls.plain_ehlo = reply
        return [SendUpstream(b"STARTTLS\r\n", Purpose.UPSTREAM_STARTTLS, command)]
    why = "doesn't offer STARTTLS" if reply.is_positive else f"refused EHLO: {reply.text}"
    return _no_tls(session, command, reply, f"next server {why}")


def starttls_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """The reply to our STARTTLS: 220, the handshake; else plain text (or 421)."""
    command = action.command
    assert command is not None
    if reply.code == 220:
        return [StartUpstreamTLS(command)]
    machine = session.outtls
    assert machine.plain_ehlo is not None
    plain, machine.plain_ehlo = machine.plain_ehlo, None
    return _no_tls(session, command, plain, f"next server refused STARTTLS: {reply.text}")


def _no_tls(session: SessionState, command: Command, ehlo_reply: Reply, why: str) -> list[Action]:
    """No TLS to the next server: under encrypt the client gets 421 and nothing goes
    upstream; under may the session goes on in plain text (the EHLO reply we got is the
    client's, a HELO is sent as the client said it)."""
    if session.policy.upstream_tls_required:
        return [
            Log(logging.ERROR, f"TLS required (OutTLS: encrypt): {why}"),
            SendClient(UPSTREAM_TLS_UNAVAILABLE),
            Close(),
        ]
    log = Log(logging.INFO, f"plain text to the next server (OutTLS: may): {why}")
    if command.verb is Verb.EHLO:
        return [log, *command_reply(session, command, ehlo_reply)]
    return [log, *session.dispatch(command)]


def tls_started(session: SessionState, event: UpstreamTLSStarted) -> list[Action]:
    """The handshake is done: the client's HELO/EHLO goes over it, and its reply (the
    new extensions) is the client's."""
    session.outtls.active = True
    session.outtls.plain_ehlo = None
    session.extensions = Extensions(frozenset(), None)
    return session.dispatch(event.command)


def _plain_under_encrypt(session: SessionState, command: Command) -> bool:
    return session.policy.upstream_tls_required and not session.outtls.active


def _need_helo(session: SessionState, command: Command) -> list[Action]:
    # OutTLS: encrypt: nothing of the client's goes upstream before TLS is up.
    return [SendClient(NEED_HELO)]


UPGRADE = Gate("upstream starttls", frozenset({Verb.EHLO, Verb.HELO}), _due, _upgrade)
ENCRYPT_FIRST = Gate(
    "outtls encrypt",
    ANY_VERB - {Verb.QUIT, Verb.NOOP, Verb.RSET},
    _plain_under_encrypt,
    _need_helo,
)
