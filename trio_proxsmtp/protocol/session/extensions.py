"""The EHLO keywords the proxy itself adds or changes, one `EhloExtension` each (after
wsproto's extensions: each offers and accepts itself): what it says in the EHLO reply to
the client, and the gate its command meets.  protocol/smtp/ehlo.py keeps the parsing and the
rewrite primitives; what the proxy strips is there too (STRIPPED_EXTENSIONS)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from trio_proxsmtp.protocol.session.actions import Action, Log, SendClient, SkipBytes, StartTLS
from trio_proxsmtp.protocol.session.chunking import bdat_size, first_bdat
from trio_proxsmtp.protocol.session.gate import Gate
from trio_proxsmtp.protocol.session.limits import declared_too_big, size_limit
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.session.wire import (
    AUTH_NEEDS_ENCRYPTION,
    MESSAGE_TOO_BIG,
    NOT_IMPLEMENTED,
    READY_TO_START_TLS,
    TLS_ALREADY_ACTIVE,
    TLS_IN_TRANSACTION,
    TLS_NO_PARAMETERS,
)
from trio_proxsmtp.protocol.smtp.commands import Command, Verb
from trio_proxsmtp.protocol.smtp.ehlo import advertise, rewrite_ehlo_reply
from trio_proxsmtp.protocol.smtp.replies import Reply

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.state import SessionState

# RFC 8689 §5: a MAIL FROM with REQUIRETLS where the proxy cannot honour it.
REQUIRETLS_UNAVAILABLE = Reply.single(
    530, "5.7.30 REQUIRETLS needs TLS from the client and a verified TLS next hop"
)

__all__ = [
    "AUTH",
    "CHUNKING",
    "EXTENSIONS",
    "NOT_OFFERED",
    "PIPELINING",
    "REQUIRETLS",
    "REQUIRETLS_UNAVAILABLE",
    "SIZE",
    "STARTTLS",
    "XFORWARD",
]


@attrs.frozen
class EhloExtension:
    """`offer(session)`: the line it adds to the client's EHLO reply, or None; `gate`: what
    its command meets (protocol/session/gates.py puts the gates in order)."""

    keyword: str
    offer: Callable[[SessionState], str | None]
    gate: Gate | None = None
    # Whether the next server's own line for the keyword is taken out first (before `offer`).
    withdraw: Callable[[SessionState], bool] | None = None

    def advertise(self, session: SessionState, reply: Reply) -> Reply:
        if self.withdraw is not None and self.withdraw(session):
            reply = rewrite_ehlo_reply(reply, frozenset({self.keyword}))
        line = self.offer(session)
        return reply if line is None else advertise(reply, line)


def _never(session: SessionState) -> str | None:
    return None


# -- SIZE (RFC 1870): MaxMessageSize, or the next server's, the smaller ---------------


def _offer_size(session: SessionState) -> str | None:
    return f"SIZE {size_limit(session)}" if session.policy.max_message_size else None


def _too_big(session: SessionState, command: Command) -> list[Action]:
    # RFC 1870: refused at once, never forwarded; the upstream's own SIZE it checks itself.
    return [
        Log(logging.INFO, f"refused MAIL over MaxMessageSize: {command.argument}"),
        SendClient(MESSAGE_TOO_BIG),
    ]


SIZE = EhloExtension(
    "SIZE", _offer_size, Gate("size", frozenset({Verb.MAIL}), declared_too_big, _too_big)
)

# -- STARTTLS from the client (RFC 3207): answered here, the next server never hears of it


def _offer_starttls(session: SessionState) -> str | None:
    return "STARTTLS" if session.policy.starttls and not session.tls else None


def _starttls_offered(session: SessionState, command: Command) -> bool:
    return session.policy.starttls


def _starttls(session: SessionState, command: Command) -> list[Action]:
    """RFC 3207 section 4."""
    if session.tls:
        return [SendClient(TLS_ALREADY_ACTIVE)]
    if command.argument.strip():
        return [SendClient(TLS_NO_PARAMETERS)]
    if session.state is State.RCPT:
        return [SendClient(TLS_IN_TRANSACTION)]
    return [SendClient(READY_TO_START_TLS), StartTLS()]


STARTTLS = EhloExtension(
    "STARTTLS",
    _offer_starttls,
    Gate("starttls", frozenset({Verb.STARTTLS}), _starttls_offered, _starttls),
)

# -- CHUNKING from the client (RFC 3030; Chunking: on), never BINARYMIME --------------


def _offer_chunking(session: SessionState) -> str | None:
    return "CHUNKING" if session.policy.chunking else None


def _chunking_on(session: SessionState, command: Command) -> bool:
    return session.policy.chunking


CHUNKING = EhloExtension(
    "CHUNKING", _offer_chunking, Gate("bdat", frozenset({Verb.BDAT}), _chunking_on, first_bdat)
)

# -- PIPELINING towards the client: ours, whatever the upstream says ------------------


def _offer_pipelining(session: SessionState) -> str | None:
    # Every buffered command waits its turn and gets its own reply (B1); towards the next
    # server, MAIL and RCPT are grouped only when it offers PIPELINING (`groups`).
    return "PIPELINING" if session.policy.pipelining else None


PIPELINING = EhloExtension("PIPELINING", _offer_pipelining)


def groups(session: SessionState, command: Command) -> bool:
    """PIPELINING towards the next server (RFC 2920): a MAIL or RCPT in a transaction's
    states, to a next server that offers it, may be sent with the commands before it."""
    return (
        command.verb in (Verb.MAIL, Verb.RCPT)
        and session.state in (State.MAIL, State.RCPT)
        and session.extensions.has("PIPELINING")
    )


# -- AUTH: relayed as the next server offers it, but not from TLS to plain text -------


def _plain_hop(session: SessionState, command: Command) -> bool:
    return session.tls and not session.outtls.active


def _needs_encryption(session: SessionState, command: Command) -> list[Action]:
    # Credentials the client sent encrypted never cross a plain-text hop.
    return [
        Log(logging.WARNING, "refused AUTH: the client used TLS, the next server not"),
        SendClient(AUTH_NEEDS_ENCRYPTION),
    ]


AUTH = EhloExtension(
    "AUTH", _never, Gate("auth needs tls", frozenset({Verb.AUTH}), _plain_hop, _needs_encryption)
)

# -- STARTTLS and BDAT when not offered ------------------------------------------------


def _always(session: SessionState, command: Command) -> bool:
    return True


def _not_implemented(session: SessionState, command: Command) -> list[Action]:
    actions: list[Action] = [SendClient(NOT_IMPLEMENTED)]
    chunk = bdat_size(command) if command.verb is Verb.BDAT else 0
    if chunk:
        actions.insert(0, SkipBytes(chunk))  # the chunk is read and dropped
    return actions


NOT_OFFERED = Gate("not offered", frozenset({Verb.STARTTLS, Verb.BDAT}), _always, _not_implemented)

# -- REQUIRETLS (RFC 8689): only where both hops are TLS, the next one verified ----------


def _requiretls_possible(session: SessionState) -> bool:
    """The client side is TLS, and the next hop is TLS with a verified certificate (OutTLS
    encrypt/implicit, OutTLSVerify on) and offers REQUIRETLS itself."""
    return (
        session.tls
        and session.policy.verified_tls_hop
        and session.outtls.active
        and session.extensions.has("REQUIRETLS")
    )


def _offer_requiretls(session: SessionState) -> str | None:
    return "REQUIRETLS" if _requiretls_possible(session) else None


def _asks_requiretls(session: SessionState, command: Command) -> bool:
    asked = any(p.partition("=")[0].upper() == "REQUIRETLS" for p in command.params)
    return asked and not _requiretls_possible(session)


def _requiretls_refused(session: SessionState, command: Command) -> list[Action]:
    return [
        Log(logging.INFO, "refused MAIL with REQUIRETLS: not offered on this path"),
        SendClient(REQUIRETLS_UNAVAILABLE),
    ]


def _always_withdrawn(session: SessionState) -> bool:
    return True


REQUIRETLS = EhloExtension(
    "REQUIRETLS",
    _offer_requiretls,
    Gate("requiretls", frozenset({Verb.MAIL}), _asks_requiretls, _requiretls_refused),
    withdraw=_always_withdrawn,
)

# -- XFORWARD: not offered to the client under XForward: on (the proxy sends its own) --


def _xforward_ours(session: SessionState) -> bool:
    return session.policy.xforward


XFORWARD = EhloExtension("XFORWARD", _never, withdraw=_xforward_ours)

# The order the client's EHLO reply says them in.
EXTENSIONS = (SIZE, STARTTLS, CHUNKING, PIPELINING, AUTH, REQUIRETLS, XFORWARD)
