"""XCLIENT towards the next server (XCLIENT: on; Postfix's extension): sent once, before
the client's first command after its HELO/EHLO, when the next server offers it (assumed
after HELO, docs/behaviour.md §4.5); Postfix answers with a new greeting, so the client's
HELO/EHLO is said again (B20).  The client's own XCLIENT is refused (a gate too).

The line never carries a value the next server must refuse: a NAME= that is not a host
name, or a NAME=/HELO= over 255 bytes once xtext-decoded (Postfix: "501 5.5.4 Bad HELO
syntax"), is sent as [UNAVAILABLE], and so is what would take the line past 512 bytes.
A refusal of an XCLIENT the next server advertised fails closed: 421 to the client, and
the connection ends (docs/behaviour.md §4.5), so no message goes as the proxy's own."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.session.actions import (
    Action,
    Close,
    Log,
    Purpose,
    SendClient,
    SendUpstream,
)
from trio_proxsmtp.protocol.session.gate import ANY_VERB, Gate
from trio_proxsmtp.protocol.session.wire import INSUFFICIENT_AUTHORIZATION, XCLIENT_REFUSED
from trio_proxsmtp.protocol.smtp.commands import Command, Verb, xtext_encode
from trio_proxsmtp.protocol.smtp.replies import Reply

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = [
    "CLIENT_XCLIENT",
    "LINE_MAX",
    "SEND_XCLIENT",
    "VALUE_MAX",
    "xclient_helo_reply",
    "xclient_line",
    "xclient_reply",
]

UNAVAILABLE = "[UNAVAILABLE]"
# Postfix refuses a NAME= or HELO= longer than this, once xtext-decoded (VALID_HOSTNAME_LEN).
VALUE_MAX = 255
# A command line with its CRLF (RFC 5321 §4.5.3.1.4): what every next server takes.
LINE_MAX = 512
# A host name as Postfix's valid_hostname takes it for NAME=: labels of letters, digits,
# "_" and inner "-", at most 63 each, not all digits; or Postfix's own bracketed words.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_UNKNOWN_NAMES = frozenset({UNAVAILABLE, "[TEMPUNAVAIL]"})


def _name(name: str) -> str | None:
    """NAME= as sent: the client's host name if the next server can take it, else None."""
    if name in _UNKNOWN_NAMES:
        return name
    if len(name) > VALUE_MAX or not _HOST_NAME.fullmatch(name):
        return None
    return None if name.replace(".", "").isdigit() else name


def _helo(helo: str) -> str | None:
    """HELO= as sent: the client's HELO/EHLO name xtext-encoded, or None when too long."""
    if len(helo.encode("utf-8", "surrogateescape")) > VALUE_MAX:
        return None
    return xtext_encode(helo)


def xclient_line(session: SessionState) -> tuple[bytes, list[Action]]:
    """Our XCLIENT line, at most LINE_MAX bytes, and a note for each value it could not
    carry (sent as [UNAVAILABLE]: docs/behaviour.md §4.5)."""
    policy = session.policy
    addr = policy.client
    if policy.client_is_ipv6 and addr:
        addr = "IPv6:" + addr
    head = f"XCLIENT ADDR={xtext_encode(addr) if addr else UNAVAILABLE}"
    notes: list[Action] = []
    name: str | None = None
    helo: str | None = None
    if policy.xclient_name:
        name = _name(policy.xclient_name)
        if name is None:
            notes.append(Log(logging.INFO, f"XCLIENT NAME= sent as {UNAVAILABLE}: bad name"))
            name = UNAVAILABLE
    if session.helo_name:
        helo = _helo(session.helo_name)
        if helo is None:
            notes.append(Log(logging.INFO, f"XCLIENT HELO= sent as {UNAVAILABLE}: too long"))
            helo = UNAVAILABLE

    def line() -> str:
        named = "" if name is None else f" NAME={name}"
        return f"{head}{named}{'' if helo is None else f' HELO={helo}'}\r\n"

    # Past LINE_MAX (an 8-bit HELO name triples when encoded): HELO= goes first, then NAME=.
    text = line()
    if len(text) > LINE_MAX and helo not in (None, UNAVAILABLE):
        notes.append(Log(logging.INFO, f"XCLIENT HELO= sent as {UNAVAILABLE}: line too long"))
        helo = UNAVAILABLE
        text = line()
    if len(text) > LINE_MAX and name is not None:  # (a NAME= fits beside HELO=[UNAVAILABLE])
        name = UNAVAILABLE
        text = line()
    return text.encode("ascii"), notes


def _due(session: SessionState, command: Command) -> bool:
    return session.xclient.armed(session.policy.xclient, session.helo_line)


def _send(session: SessionState, command: Command) -> list[Action]:
    # The command is dispatched only once the XCLIENT exchange is over, so that nothing it
    # changes (the state, the envelope) is seen by the swallowed replies.
    session.xclient.sent = True
    line, notes = xclient_line(session)
    return [*notes, SendUpstream(line, Purpose.XCLIENT, command)]


def xclient_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """Our XCLIENT's reply (swallowed): the HELO/EHLO again, or the waiting command."""
    assert action.command is not None
    if not reply.is_positive and session.xclient.advertised:
        # Fail closed (docs/behaviour.md §4.5): going on would send the client's mail as
        # the proxy's own, under the next server's policy for the proxy's address.
        return [
            Log(logging.ERROR, f"next server refused XCLIENT: {reply.text}: closing"),
            SendClient(XCLIENT_REFUSED),
            Close(),
        ]
    if not reply.is_positive:
        # Only assumed after HELO, never advertised: as 1.10, a warning, and on.
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
