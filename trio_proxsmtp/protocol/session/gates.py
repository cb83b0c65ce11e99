"""The command gates, in order: the checks a client command meets before it is forwarded
as is.  The first gate that applies answers the command; none, and it goes upstream.

The one list serves both questions: dispatching a command (`dispatch`), and whether a
MAIL or RCPT may join a pipelined group towards the next server (`pipelinable`: no gate
applies to it, so the session would forward it as is).  A gate is added here, once, by
the part of the session that owns it; nothing restates it in the negative.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.message.summary import refusal_status
from trio_proxsmtp.protocol.session import extensions
from trio_proxsmtp.protocol.session.actions import (
    Action,
    AskMilters,
    Purpose,
    ReceiveMessage,
    SendClient,
    SendUpstream,
)
from trio_proxsmtp.protocol.session.auth import CONTINUATION
from trio_proxsmtp.protocol.session.chunking import BETWEEN_CHUNKS
from trio_proxsmtp.protocol.session.delivery import RSET, summary
from trio_proxsmtp.protocol.session.envelope import AcceptedEnvelope, MessageFacts
from trio_proxsmtp.protocol.session.gate import Gate
from trio_proxsmtp.protocol.session.limits import MAX_RECIPIENTS
from trio_proxsmtp.protocol.session.milters import ASK_MILTERS, RSET_MILTERS, asks
from trio_proxsmtp.protocol.session.policy_service import ASK_POLICY
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.session.upstream_tls import ENCRYPT_FIRST, UPGRADE
from trio_proxsmtp.protocol.session.wire import NEED_MAIL, NO_VALID_RECIPIENTS, START_MAIL_INPUT
from trio_proxsmtp.protocol.session.xclient import CLIENT_XCLIENT, SEND_XCLIENT
from trio_proxsmtp.protocol.session.xforward import CLIENT_XFORWARD, SEND_XFORWARD
from trio_proxsmtp.protocol.smtp.commands import Command, Verb

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = ["DISPATCH_GATES", "GATES", "dispatch", "pipelinable"]


# -- FilterType: reject ----------------------------------------------------------------


def rejecting(session: SessionState) -> bool:
    policy = session.policy
    if policy.reject is None:
        return False
    return not (policy.skip_authenticated and session.auth.authenticated)


def _rejecting(session: SessionState, command: Command) -> bool:
    return rejecting(session)


def _reject(session: SessionState, command: Command) -> list[Action]:
    assert session.policy.reject is not None
    session.envelope = AcceptedEnvelope()
    return [SendClient(session.policy.reject)]


# -- DATA ------------------------------------------------------------------------------


def _always(session: SessionState, command: Command) -> bool:
    return True


def _data(session: SessionState, command: Command) -> list[Action]:
    """DATA is answered here (354, or why not); the next server hears of it at the replay."""
    policy = session.policy
    if rejecting(session):
        # Nothing reaches the upstream; its transaction (if any) is reset.
        assert policy.reject is not None
        reply = policy.reject
        session.facts = MessageFacts()
        line = summary(session, refusal_status(reply.code), reply.text)
        session.envelope = AcceptedEnvelope()
        if session.state is State.RCPT:
            session.state = State.MAIL
        return [SendClient(reply), RSET, line]
    if policy.skip_authenticated and session.auth.authenticated and not policy.milters:
        return [SendUpstream(b"DATA\r\n", Purpose.SKIP_DATA)]
    if session.envelope.sender is None:
        return [SendClient(NEED_MAIL)]
    if not session.envelope.recipients:
        return [SendClient(NO_VALID_RECIPIENTS)]
    if asks(session, command):
        return [AskMilters(command)]
    session.state = State.DATA
    session.facts = MessageFacts()
    return [SendClient(START_MAIL_INPUT), ReceiveMessage(stream=False)]


def _own(extension: extensions.EhloExtension) -> Gate:
    assert extension.gate is not None
    return extension.gate


REJECT = Gate("filter reject", frozenset({Verb.MAIL, Verb.RCPT}), _rejecting, _reject)
DATA = Gate("data", frozenset({Verb.DATA}), _always, _data)

# The order matters where two gates can apply to one command.
GATES: tuple[Gate, ...] = (
    CONTINUATION,  # entry: inside AUTH every line is a continuation
    SEND_XCLIENT,  # entry: our XCLIENT before the client's first command after HELO
    BETWEEN_CHUNKS,
    _own(extensions.CHUNKING),
    UPGRADE,
    _own(extensions.AUTH),
    _own(extensions.STARTTLS),
    extensions.NOT_OFFERED,
    CLIENT_XCLIENT,
    CLIENT_XFORWARD,
    REJECT,
    MAX_RECIPIENTS,
    _own(extensions.SIZE),
    _own(extensions.REQUIRETLS),
    DATA,
    ASK_POLICY,  # before the milters, as Postfix's restrictions come before its milters
    ASK_MILTERS,
    RSET_MILTERS,
    ENCRYPT_FIRST,
    SEND_XFORWARD,  # last: only a MAIL that goes upstream is announced
)
# A command that waited (for XCLIENT, the milters, TLS) meets all but the entry gates.
DISPATCH_GATES = tuple(gate for gate in GATES if not gate.entry)

# The same lists by verb: a command looks only at the gates that can apply to it.
_BY_VERB = {verb: tuple(g for g in GATES if verb in g.verbs) for verb in Verb}
_DISPATCH_BY_VERB = {verb: tuple(g for g in DISPATCH_GATES if verb in g.verbs) for verb in Verb}


def dispatch(session: SessionState, command: Command, *, entry: bool) -> list[Action]:
    """The first gate that applies answers the command; none, and it is forwarded."""
    for gate in (_BY_VERB if entry else _DISPATCH_BY_VERB)[command.verb]:
        if gate.applies(session, command):
            return gate.answer(session, command)
    return [SendUpstream(command.line, Purpose.COMMAND, command)]


def pipelinable(session: SessionState, command: Command) -> bool:
    """Whether `command` may join a group sent upstream in one write before the replies
    to the group's earlier commands (RFC 2920): a MAIL or RCPT the session would forward
    as is (no gate applies), to a next server that offers PIPELINING.  DATA never joins:
    it is answered by us once the replies to MAIL and RCPT are in (docs/behaviour.md
    §11)."""
    if not extensions.groups(session, command):
        return False
    return not any(gate.applies(session, command) for gate in _BY_VERB[command.verb])
