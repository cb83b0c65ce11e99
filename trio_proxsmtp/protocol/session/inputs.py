"""The session's simplest inputs, each a line or two: the client's lines the proxy
answers itself, and the facts about the connection the relay learns (TLS on either side,
the client's host name)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from trio_proxsmtp.protocol.session.actions import Action, Log, SendClient
from trio_proxsmtp.protocol.session.envelope import AcceptedEnvelope
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.session.wire import LINE_TOO_LONG
from trio_proxsmtp.protocol.smtp.commands import BAD_CHARACTER

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.events import (
        BadCommandLine,
        ClientCommand,
        ClientNameKnown,
        ClientTLSActive,
        ClientTLSStarted,
        CommandTooLong,
        UpstreamTLSActive,
    )
    from trio_proxsmtp.protocol.session.state import SessionState


def command(session: SessionState, event: ClientCommand) -> list[Action]:
    return session.dispatch(event.command, entry=True)


def too_long(session: SessionState, event: CommandTooLong) -> list[Action]:
    return [SendClient(LINE_TOO_LONG)]


def bad_line(session: SessionState, event: BadCommandLine) -> list[Action]:
    note = Log(logging.WARNING, f"refused a command line: {event.reason}")
    if session.auth.in_progress:
        return session.auth.cancel(note)
    return [note, SendClient(BAD_CHARACTER)]


def tls_started(session: SessionState, event: ClientTLSStarted) -> list[Action]:
    """The handshake is done: forget the client's HELO and envelope; it says EHLO again."""
    session.tls = True
    session.envelope = AcceptedEnvelope()
    session.state = State.HELO
    session.helo_line = session.helo_name = None
    return []


def tls_active(session: SessionState, event: ClientTLSActive) -> list[Action]:
    session.tls = True
    return []


def upstream_tls_active(session: SessionState, event: UpstreamTLSActive) -> list[Action]:
    session.outtls.active = True
    return []


def client_name(session: SessionState, event: ClientNameKnown) -> list[Action]:
    session.policy = attrs.evolve(session.policy, xclient_name=event.name)
    return []
