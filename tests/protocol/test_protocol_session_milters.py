"""The sans-IO session's milter rows: which commands ask the milters, what their answer
does, and the replay of a changed envelope, driven by hand (no Trio, no milter)."""

from __future__ import annotations

import pytest

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.message.edit import MilterEnvelope, Recipient
from trio_proxsmtp.protocol.message.summary import Status
from trio_proxsmtp.protocol.milter.messages import MilterVerdictKind
from trio_proxsmtp.protocol.session.actions import (
    AbortMilters,
    AskMilters,
    Purpose,
    ReceiveMessage,
    RunMilters,
    SendClient,
    SendUpstream,
    Summary,
)
from trio_proxsmtp.protocol.session.events import (
    ClientCommand,
    Greeting,
    MessageReceived,
    MiltersDecided,
    MiltersDone,
    UpstreamReply,
)
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.session.wire import MILTER_DISCARDED, START_MAIL_INPUT
from trio_proxsmtp.protocol.smtp.commands import parse_command
from trio_proxsmtp.protocol.smtp.replies import Reply

OK = Reply.single(250, "2.0.0 Ok")
REFUSED = Reply.single(550, "5.1.1 no such user")
POLICY = SessionPolicy(client="192.0.2.1", filtering=False, milters=True)


def command(line: str) -> object:
    return parse_command(line.encode() + b"\r\n")


def passed(session: Session, line: str) -> list[object]:
    """The command asks the milters, they let it through: what the session does then."""
    [ask] = session.handle(ClientCommand(command(line)))  # type: ignore[arg-type]
    assert isinstance(ask, AskMilters)
    return list(session.handle(MiltersDecided(ask, MilterVerdictKind.CONTINUE, None, None)))


def up(session: Session, reply: Reply = OK) -> list[object]:
    return list(session.handle(UpstreamReply(reply)))


def in_transaction() -> Session:
    session = Session(POLICY)
    session.handle(Greeting(Reply.single(220, "up")))
    assert isinstance(passed(session, "EHLO c")[0], SendUpstream)
    up(session, Reply(250, ("up", "SIZE 1000")))
    passed(session, "MAIL FROM:<s@x> BODY=8BITMIME")
    up(session)
    passed(session, "RCPT TO:<r@x>")
    up(session)
    return session


def test_without_milters_nothing_asks_them() -> None:
    session = Session(SessionPolicy(client="192.0.2.1"))
    session.handle(Greeting(Reply.single(220, "up")))
    [action] = session.handle(ClientCommand(parse_command(b"EHLO c\r\n")))
    assert isinstance(action, SendUpstream)


def test_a_refusal_answers_the_client_and_nothing_goes_upstream() -> None:
    session = in_transaction()
    [ask] = session.handle(ClientCommand(parse_command(b"RCPT TO:<bad@x>\r\n")))
    assert isinstance(ask, AskMilters)
    actions = session.handle(MiltersDecided(ask, MilterVerdictKind.REJECT, REFUSED, "inet:m:1"))
    assert SendClient(REFUSED) in actions
    assert not any(isinstance(a, SendUpstream) for a in actions)
    assert session.envelope.recipients == ["r@x"] and not session.pending


def test_data_asks_the_milters_after_the_envelope_checks() -> None:
    session = in_transaction()
    actions = passed(session, "DATA")
    assert actions == [SendClient(START_MAIL_INPUT), ReceiveMessage(stream=False)]
    assert session.handle(MessageReceived(10)) == [RunMilters()]
    assert session.state is State.MILTERING


def test_rset_and_a_refused_mail_abort_the_milters() -> None:
    session = in_transaction()
    assert session.handle(ClientCommand(parse_command(b"RSET\r\n")))[0] == AbortMilters()
    up(session)
    passed(session, "MAIL FROM:<s@x>")
    assert up(session, REFUSED)[0] == AbortMilters()


def test_a_milter_answer_is_illegal_outside_its_states() -> None:
    session = in_transaction()
    passed(session, "DATA")
    with pytest.raises(LocalProtocolError):
        session.handle(MiltersDone(MilterVerdictKind.CONTINUE, None, None))  # still receiving


def test_discard_answers_250_and_resets_the_upstream() -> None:
    session = in_transaction()
    passed(session, "DATA")
    session.handle(MessageReceived(10))
    actions = session.handle(MiltersDone(MilterVerdictKind.DISCARD, None, "inet:m:1"))
    assert actions[0] == SendClient(MILTER_DISCARDED)
    assert actions[1] == SendUpstream(b"RSET\r\n", Purpose.RSET)
    assert isinstance(actions[2], Summary) and actions[2].outcome is Status.DROPPED
    assert "milter=inet:m:1" in actions[2].text


def test_a_changed_envelope_is_replayed_line_by_line_then_data() -> None:
    session = in_transaction()
    passed(session, "DATA")
    session.handle(MessageReceived(10))
    changed = MilterEnvelope("new@x", (Recipient("r@x"), Recipient("gone@x")), ("BODY=8BITMIME",))
    sent = []
    actions = session.handle(MiltersDone(MilterVerdictKind.CONTINUE, None, None, changed))
    for reply in (OK, OK, OK, REFUSED):
        [*_, action] = actions
        assert isinstance(action, SendUpstream) and action.purpose is Purpose.REPLAY_ENVELOPE
        sent.append(action.line)
        actions = session.handle(UpstreamReply(reply))
    assert sent == [
        b"RSET\r\n",
        b"MAIL FROM:<new@x> BODY=8BITMIME\r\n",
        b"RCPT TO:<r@x>\r\n",
        b"RCPT TO:<gone@x>\r\n",
    ]
    assert actions[-1] == SendUpstream(b"DATA\r\n", Purpose.DATA)
    assert session.envelope.recipients == ["r@x"]  # only what the upstream accepted


def test_a_line_break_in_a_changed_address_fails_the_message() -> None:
    session = in_transaction()
    passed(session, "DATA")
    session.handle(MessageReceived(10))
    changed = MilterEnvelope("a@x>\r\nRCPT TO:<evil@x", (Recipient("r@x"),))
    actions = session.handle(MiltersDone(MilterVerdictKind.CONTINUE, None, None, changed))
    [answer] = [a for a in actions if isinstance(a, SendClient)]
    assert answer.reply.code == 451
    assert not any(isinstance(a, SendUpstream) and b"evil" in a.line for a in actions)


def test_a_changed_envelope_says_xforward_again_after_its_rset() -> None:
    # XForward: on (issue 23): the replay's RSET makes Postfix forget the attributes.
    session = Session(
        SessionPolicy(client="192.0.2.1", filtering=False, milters=True, xforward=True)
    )
    session.handle(Greeting(Reply.single(220, "up")))
    passed(session, "EHLO c")
    up(session, Reply(250, ("up", "XFORWARD ADDR HELO")))
    [xforward] = passed(session, "MAIL FROM:<s@x>")
    assert isinstance(xforward, SendUpstream) and xforward.purpose is Purpose.XFORWARD
    [mail] = up(session)
    assert isinstance(mail, SendUpstream) and mail.line == b"MAIL FROM:<s@x>\r\n"
    up(session)
    passed(session, "RCPT TO:<r@x>")
    up(session)
    passed(session, "DATA")
    session.handle(MessageReceived(10))
    changed = MilterEnvelope("new@x", (Recipient("r@x"),))
    sent = []
    actions = session.handle(MiltersDone(MilterVerdictKind.CONTINUE, None, None, changed))
    for _ in range(4):
        [*_, action] = actions
        assert isinstance(action, SendUpstream) and action.purpose is Purpose.REPLAY_ENVELOPE
        sent.append(action.line)
        actions = session.handle(UpstreamReply(OK))
    assert sent == [
        b"RSET\r\n",
        b"XFORWARD ADDR=192.0.2.1 HELO=c\r\n",
        b"MAIL FROM:<new@x>\r\n",
        b"RCPT TO:<r@x>\r\n",
    ]
    assert actions[-1] == SendUpstream(b"DATA\r\n", Purpose.DATA)
