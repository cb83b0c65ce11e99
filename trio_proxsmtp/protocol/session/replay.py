"""The milters' changed envelope, replayed upstream (RSET, MAIL FROM, each RCPT TO), one
reply at a time: the recipients the next server accepts are the message's; none, and the
message is not delivered."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from trio_proxsmtp.protocol.message.edit import MilterEnvelope
from trio_proxsmtp.protocol.session.actions import Action, Log, Purpose, SendUpstream
from trio_proxsmtp.protocol.session.delivery import filter_status, finish, replay
from trio_proxsmtp.protocol.smtp.commands import parse_command
from trio_proxsmtp.protocol.smtp.replies import LOCAL_ERROR, Reply

if TYPE_CHECKING:
    from trio_proxsmtp.protocol.session.state import SessionState

__all__ = ["envelope_lines", "replay_reply"]


def replay_reply(session: SessionState, action: SendUpstream, reply: Reply) -> list[Action]:
    """One reply of the changed envelope's replay; the next line, or our DATA."""
    machine = session.replay
    actions: list[Action] = []
    if action.line.startswith(b"RCPT"):
        recipient = parse_command(action.line).address or ""
        if reply.is_positive:
            machine.accepted += 1
            session.envelope.recipients.append(recipient)
        else:
            machine.refusal = reply
            message = f"next server refused recipient {recipient}: {reply.text}"
            actions.append(Log(logging.WARNING, message))
    elif not reply.is_positive:  # RSET or the (changed) MAIL FROM
        final = reply if reply.code >= 400 else LOCAL_ERROR
        return finish(session, final, filter_status(session), rset=True)
    if machine.lines:
        return [*actions, SendUpstream(machine.lines.popleft(), Purpose.REPLAY_ENVELOPE)]
    if not machine.accepted:
        final = machine.refusal or LOCAL_ERROR
        return [*actions, *finish(session, final, filter_status(session), rset=True)]
    return [*actions, *replay(session)]


def envelope_lines(envelope: MilterEnvelope) -> list[bytes]:
    """MAIL FROM and RCPT TO lines for a changed envelope; ValueError for a line break."""

    def line(keyword: str, address: str, params: tuple[str, ...]) -> bytes:
        text = f"{keyword}:<{address}>" + "".join(f" {p}" for p in params)
        if "\r" in text or "\n" in text:
            raise ValueError(f"milter envelope address with a line break: {text!r}")
        return (text + "\r\n").encode("utf-8", "surrogateescape")

    lines = [line("MAIL FROM", envelope.sender, envelope.sender_args)]
    lines.extend(line("RCPT TO", rcpt.address, rcpt.args) for rcpt in envelope.recipients)
    return lines
