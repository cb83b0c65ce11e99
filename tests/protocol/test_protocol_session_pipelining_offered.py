"""`SessionState.pipelining_offered`: our reply to the client's EHLO listed PIPELINING, so
it may end a pipelined group with QUIT and half-close (docs/behaviour.md §11.20)."""

from __future__ import annotations

import pytest

from trio_proxsmtp.protocol.session.actions import SendClient
from trio_proxsmtp.protocol.session.events import ClientCommand, Greeting, UpstreamReply
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.smtp.commands import parse_command
from trio_proxsmtp.protocol.smtp.replies import Reply


@pytest.mark.parametrize(
    ("pipelining", "greeting", "offered"),
    [(True, b"EHLO c", True), (True, b"HELO c", False), (False, b"EHLO c", False)],
)
def test_offered_only_in_a_reply_to_ehlo_under_pipelining_on(
    pipelining: bool, greeting: bytes, offered: bool
) -> None:
    session = Session(SessionPolicy(client="c", filtering=False, pipelining=pipelining))
    session.handle(Greeting(Reply.single(220, "up.example ESMTP")))
    assert not session.pipelining_offered
    session.handle(ClientCommand(parse_command(greeting + b"\r\n")))
    lines = ("up.example", "PIPELINING") if greeting.startswith(b"EHLO") else ("up.example",)
    actions = session.handle(UpstreamReply(Reply(250, lines)))
    [reply] = [action.reply for action in actions if isinstance(action, SendClient)]
    assert ("PIPELINING" in reply.lines) is offered
    assert session.pipelining_offered is offered
