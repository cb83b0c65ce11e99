"""XCLIENT towards the next server (XCLIENT: on; Postfix's extension): sent once, before
the client's first command after its HELO/EHLO, when the next server offers it (assumed
after HELO, docs/behaviour.md §4.5); Postfix answers with a new greeting, so the client's
HELO/EHLO is said again (B20).  The client's own XCLIENT is refused (a gate too).

Every attribute the next server names after its XCLIENT keyword and the proxy knows goes
(docs/behaviour.md §4.5): ADDR, PORT, NAME, PROTO, DESTADDR, DESTPORT, HELO; xtext-encoded,
each within Postfix's limits, each line within 512 bytes: several XCLIENT commands when one
would be longer (each answered by a greeting).  A value the next server must refuse (a NAME=
that is not a host name, any value over 255 bytes as sent, xtext-encoded, one that cannot
fit a line) is sent as [UNAVAILABLE].  A refusal of an XCLIENT the next server advertised fails
closed: 421 to the client, and the connection ends (docs/behaviour.md §4.5), so no message
goes as the proxy's own."""

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
    "ASSUMED_ATTRIBUTES",
    "CLIENT_XCLIENT",
    "LINE_MAX",
    "SEND_XCLIENT",
    "UNAVAILABLE",
    "VALUE_MAX",
    "address_value",
    "helo_value",
    "host_name",
    "offered_attributes",
    "pack",
    "port_value",
    "xclient_helo_reply",
    "xclient_lines",
    "xclient_reply",
]

UNAVAILABLE = "[UNAVAILABLE]"
# Postfix refuses any XCLIENT/XFORWARD value longer than this as sent, xtext-encoded
# ("501 5.5.4 Error: attribute value too long", seen from Postfix 3.7): an 8-bit HELO name
# triples when encoded, so its limit is 85 such bytes, not 255.
VALUE_MAX = 255
# A command line with its CRLF (RFC 5321 §4.5.3.1.4): what every next server takes.
LINE_MAX = 512
# What a next server that was greeted with HELO (no EHLO keywords) is assumed to take.
ASSUMED_ATTRIBUTES = frozenset({"ADDR", "NAME", "HELO"})
# A host name as Postfix's valid_hostname takes it for NAME=: labels of letters, digits,
# "_" and inner "-", at most 63 each, not all digits; or Postfix's own bracketed words.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_UNKNOWN_NAMES = frozenset({UNAVAILABLE, "[TEMPUNAVAIL]"})


def offered_attributes(reply: Reply, keyword: str) -> frozenset[str]:
    """The attribute names an EHLO reply lists after `keyword` ("XCLIENT ADDR NAME ..."),
    upper-cased; empty when the keyword is not there."""
    for text in reply.lines[1:]:
        words = text.upper().split()
        if words and words[0] == keyword:
            return frozenset(words[1:])
    return frozenset()


def host_name(name: str) -> str | None:
    """NAME= as sent: the client's host name if the next server can take it, else None."""
    if name in _UNKNOWN_NAMES:
        return name
    if len(name) > VALUE_MAX or not _HOST_NAME.fullmatch(name):
        return None
    return None if name.replace(".", "").isdigit() else name


def helo_value(helo: str) -> str | None:
    """HELO= as sent: the client's HELO/EHLO name xtext-encoded, or None when that is over
    VALUE_MAX (Postfix checks the encoded value; decoded it is then within 255 too)."""
    encoded = xtext_encode(helo)
    return None if len(encoded) > VALUE_MAX else encoded


def address_value(address: str | None, ipv6: bool) -> str:
    """ADDR=/DESTADDR= as Postfix takes them: IPv6 addresses with the "IPv6:" prefix."""
    if not address:
        return UNAVAILABLE
    return xtext_encode(("IPv6:" + address) if ipv6 else address)


def port_value(port: int | None) -> str:
    return str(port) if port is not None and 0 <= port <= 65535 else UNAVAILABLE


def pack(verb: str, pieces: list[tuple[str, str]], notes: list[Action]) -> list[bytes]:
    """`VERB NAME=VALUE ...` lines, each within LINE_MAX with its CRLF, in the pieces'
    order; a piece that fits no line alone goes as NAME=[UNAVAILABLE] (noted).  No
    pieces, no line: a bare VERB would only be refused."""
    room = LINE_MAX - len(verb) - 2  # the verb and the CRLF
    lines: list[str] = []
    current = verb
    for name, value in pieces:
        piece = f" {name}={value}"
        if len(piece) > room:
            notes.append(Log(logging.INFO, f"{verb} {name}= sent as {UNAVAILABLE}: line too long"))
            piece = f" {name}={UNAVAILABLE}"
        if len(current) + len(piece) > LINE_MAX - 2:
            lines.append(current)
            current = verb
        current += piece
    if current != verb:
        lines.append(current)
    return [f"{line}\r\n".encode("ascii") for line in lines]


def xclient_lines(session: SessionState) -> tuple[list[bytes], list[Action]]:
    """Our XCLIENT lines (usually one), each at most LINE_MAX bytes, and a note for each
    value they could not carry (sent as [UNAVAILABLE]: docs/behaviour.md §4.5)."""
    policy = session.policy
    offered = session.xclient.attributes
    notes: list[Action] = []
    pieces: list[tuple[str, str]] = []
    if "ADDR" in offered:
        pieces.append(("ADDR", address_value(policy.client, policy.client_is_ipv6)))
    if "NAME" in offered and policy.xclient_name:
        name = host_name(policy.xclient_name)
        if name is None:
            notes.append(Log(logging.INFO, f"XCLIENT NAME= sent as {UNAVAILABLE}: bad name"))
            name = UNAVAILABLE
        pieces.append(("NAME", name))
    if "PORT" in offered:
        pieces.append(("PORT", port_value(policy.client_port)))
    if "PROTO" in offered and session.protocol_name is not None:
        pieces.append(("PROTO", session.protocol_name))
    if "DESTADDR" in offered and policy.destination is not None:
        ipv6 = ":" in policy.destination
        pieces.append(("DESTADDR", address_value(policy.destination, ipv6)))
    if "DESTPORT" in offered and policy.destination is not None:
        pieces.append(("DESTPORT", port_value(policy.destination_port)))
    if "HELO" in offered and session.helo_name:
        helo = helo_value(session.helo_name)
        if helo is None:
            notes.append(Log(logging.INFO, f"XCLIENT HELO= sent as {UNAVAILABLE}: too long"))
            helo = UNAVAILABLE
        pieces.append(("HELO", helo))
    return pack("XCLIENT", pieces, notes), notes


def _due(session: SessionState, command: Command) -> bool:
    return session.xclient.armed(session.policy.xclient, session.helo_line)


def _send(session: SessionState, command: Command) -> list[Action]:
    # The command is dispatched only once the XCLIENT exchange is over, so that nothing it
    # changes (the state, the envelope) is seen by the swallowed replies.
    session.xclient.sent = True
    lines, notes = xclient_lines(session)
    if not lines:  # it lists nothing we know: nothing to say
        return [*notes, *session.dispatch(command)]
    first, *rest = lines
    session.xclient.lines.extend(rest)
    return [*notes, SendUpstream(first, Purpose.XCLIENT, command)]


def xclient_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """Our XCLIENT's reply (swallowed): the HELO/EHLO again, or the waiting command."""
    assert action.command is not None
    if not reply.is_positive:
        session.xclient.lines.clear()
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
    if session.xclient.lines:  # the next of several XCLIENT lines (each greeted)
        line = session.xclient.lines.popleft()
        return [SendUpstream(line, Purpose.XCLIENT, action.command)]
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
