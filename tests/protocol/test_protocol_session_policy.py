"""The sans-IO session's PolicyService rows (protocol/session/policy_service.py): which
commands ask it, what its verdict does, and the PREPEND headers' lifetime, driven by hand."""

from __future__ import annotations

from trio_proxsmtp.protocol.milter.messages import MilterVerdictKind
from trio_proxsmtp.protocol.policy import PolicyVerdict, PolicyVerdictKind, judge
from trio_proxsmtp.protocol.session.actions import AskMilters, AskPolicy, SendClient, SendUpstream
from trio_proxsmtp.protocol.session.events import (
    ClientCommand,
    Greeting,
    MiltersDecided,
    PolicyDecided,
    UpstreamReply,
)
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.session.policy_service import prepended_headers
from trio_proxsmtp.protocol.smtp.commands import Command, parse_command
from trio_proxsmtp.protocol.smtp.replies import Reply

OK = Reply.single(250, "2.0.0 Ok")
RELAY = PolicyVerdict(PolicyVerdictKind.RELAY)


def command(line: str) -> Command:
    return parse_command(line.encode() + b"\r\n")


def after_mail(**policy: bool) -> Session:
    session = Session(SessionPolicy(client="192.0.2.1", policy_service=True, **policy))
    session.handle(Greeting(Reply.single(220, "up")))
    session.handle(ClientCommand(command("EHLO c")))
    session.handle(UpstreamReply(Reply(250, ("up", "PIPELINING"))))
    [mail] = session.handle(ClientCommand(command("MAIL FROM:<s@x>")))
    assert isinstance(mail, SendUpstream)
    session.handle(UpstreamReply(OK))
    return session


def ask(session: Session, line: str) -> AskPolicy:
    [action] = session.handle(ClientCommand(command(line)))
    assert isinstance(action, AskPolicy)
    return action


def test_rcpt_in_a_transaction_asks_and_dunno_sends_it_on_once() -> None:
    session = after_mail()
    action = ask(session, "RCPT TO:<r@x>")
    assert not session.pipelinable(command("RCPT TO:<r@x>"))  # each waits for the answer
    [send] = session.handle(PolicyDecided(action, RELAY))
    assert isinstance(send, SendUpstream) and send.line == b"RCPT TO:<r@x>\r\n"
    session.handle(UpstreamReply(OK))
    assert session.envelope.recipients == ["r@x"]


def test_a_refusal_answers_the_client_and_nothing_goes_upstream() -> None:
    session = after_mail()
    action = ask(session, "RCPT TO:<r@x>")
    actions = session.handle(PolicyDecided(action, judge("DEFER_IF_PERMIT Greylisted", "r@x")))
    assert not [a for a in actions if isinstance(a, SendUpstream)]
    [reply] = [a for a in actions if isinstance(a, SendClient)]
    assert reply.reply.code == 450
    assert session.envelope.recipients == []


def test_rcpt_before_mail_and_other_commands_do_not_ask() -> None:
    session = Session(SessionPolicy(client="192.0.2.1", policy_service=True))
    session.handle(Greeting(Reply.single(220, "up")))
    session.handle(ClientCommand(command("EHLO c")))
    session.handle(UpstreamReply(OK))
    [send] = session.handle(ClientCommand(command("RCPT TO:<r@x>")))
    assert isinstance(send, SendUpstream)  # the next server says 503


def test_the_milters_are_asked_after_the_policy_and_the_policy_once() -> None:
    session = Session(SessionPolicy(client="192.0.2.1", policy_service=True, milters=True))
    session.handle(Greeting(Reply.single(220, "up")))

    def through_milters(line: str) -> None:
        [milters] = session.handle(ClientCommand(command(line)))
        assert isinstance(milters, AskMilters)
        session.handle(MiltersDecided(milters, MilterVerdictKind.CONTINUE, None, None))
        session.handle(UpstreamReply(OK))

    through_milters("EHLO c")
    through_milters("MAIL FROM:<s@x>")
    action = ask(session, "RCPT TO:<r@x>")
    [milters] = session.handle(PolicyDecided(action, RELAY))
    assert isinstance(milters, AskMilters)
    [send] = session.handle(MiltersDecided(milters, MilterVerdictKind.CONTINUE, None, None))
    assert isinstance(send, SendUpstream)  # not asked twice


def test_prepend_headers_belong_to_their_transaction() -> None:
    session = after_mail()
    action = ask(session, "RCPT TO:<a@x>")
    session.handle(PolicyDecided(action, judge("PREPEND X-A: 1", "a@x")))
    session.handle(UpstreamReply(OK))
    action = ask(session, "RCPT TO:<b@x>")
    session.handle(PolicyDecided(action, judge("PREPEND X-B: 2", "b@x")))
    session.handle(UpstreamReply(OK))
    assert prepended_headers(session) == ("X-A: 1", "X-B: 2")
    session.handle(ClientCommand(command("RSET")))
    session.handle(UpstreamReply(OK))
    assert prepended_headers(session) == ()
