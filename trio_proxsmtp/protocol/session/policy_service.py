"""PolicyService in the session (docs/behaviour.md §11.9): a client's RCPT, in a
transaction, is asked about (`AskPolicy`) before anything else happens to it (the milters
come after, as in Postfix, where the access restrictions run before the milters' RCPT);
the answer (`PolicyDecided`) lets it go on, refuses it with its reply (the next server
never sees it), or lets it go on and adds a header to the message."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.policy import PolicyVerdictKind
from trio_proxsmtp.protocol.session.actions import Action, AskPolicy, Log, SendClient
from trio_proxsmtp.protocol.session.gate import Gate
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.smtp.commands import Command, Verb

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.events import PolicyDecided
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = ["ASK_POLICY", "policy_decided", "prepended_headers"]


def _asks(session: SessionState, command: Command) -> bool:
    """A RCPT after an accepted MAIL, not yet let through (a RCPT outside a transaction
    goes on to the next server's 503, as without a policy service)."""
    return (
        session.policy.policy_service
        and session.state is State.RCPT
        and session.policy_service.passed is not command
    )


def _ask(session: SessionState, command: Command) -> list[Action]:
    return [AskPolicy(command)]


def policy_decided(session: SessionState, event: PolicyDecided) -> list[Action]:
    command = event.action.command
    verdict = event.verdict
    actions: list[Action] = []
    if verdict.note:
        actions.append(Log(logging.WARNING, f"policy service: {verdict.note}"))
    if verdict.kind is PolicyVerdictKind.REFUSE:
        assert verdict.reply is not None
        actions.append(Log(logging.INFO, f"policy service refused RCPT: {verdict.reply.text}"))
        actions.append(SendClient(verdict.reply))
        return actions
    if verdict.kind is PolicyVerdictKind.PREPEND:
        assert verdict.header is not None
        session.policy_service.prepend(session.envelope, verdict.header)
    session.policy_service.passed = command
    return actions + session.dispatch(command)


def prepended_headers(session: SessionState) -> tuple[str, ...]:
    """The headers PREPEND answers gave the current message, in order."""
    return session.policy_service.headers_for(session.envelope)


ASK_POLICY = Gate("policy service", frozenset({Verb.RCPT}), _asks, _ask)
