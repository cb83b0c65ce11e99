"""The session's transition table, its command gates, and that only the session writes
its state (the relay sends events)."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

import trio_proxsmtp
from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.milter.messages import MilterVerdictKind
from trio_proxsmtp.protocol.session import events, gates, table
from trio_proxsmtp.protocol.session.actions import (
    Action,
    AskMilters,
    Purpose,
    ReceiveMessage,
    SendClient,
    SendMessage,
    SendUpstream,
)
from trio_proxsmtp.protocol.session.gate import Gate
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.smtp.commands import Command, Verb, parse_command
from trio_proxsmtp.protocol.smtp.replies import Reply

OK = Reply.single(250, "2.0.0 Ok")
PIPELINING_EHLO = Reply(250, ("up.example", "PIPELINING"))
MAIL = b"MAIL FROM:<s@x>\r\n"


def ready(policy: SessionPolicy | None = None) -> Session:
    s = Session(policy or SessionPolicy(client="c", filtering=False))
    s.handle(events.Greeting(Reply.single(220, "up.example ESMTP")))
    [action] = s.handle(events.ClientCommand(parse_command(b"EHLO c\r\n")))
    if isinstance(action, AskMilters):
        s.handle(events.MiltersDecided(action, MilterVerdictKind.CONTINUE, None, None))
    s.handle(events.UpstreamReply(PIPELINING_EHLO))
    return s


# -- the table ---------------------------------------------------------------------------


def test_every_entry_is_keyed_by_a_state_and_targets_states() -> None:
    event_types = set(typing.get_args(events.Event))
    for (state, what), move in table.TABLE.items():
        assert isinstance(state, State)
        assert (
            what in event_types
            or isinstance(what, Purpose)
            or what
            in (
                SendMessage,
                ReceiveMessage,
            )
        ), what
        assert move.targets and all(isinstance(target, State) for target in move.targets)
        assert callable(move.handler)


def test_every_event_and_every_purpose_has_a_row() -> None:
    keys = {what for _, what in table.TABLE}
    assert set(typing.get_args(events.Event)) - {events.UpstreamReply} <= keys
    assert set(Purpose) | {SendMessage, ReceiveMessage} <= keys
    assert events.UpstreamReply not in keys  # a reply is keyed by what it answers


def test_an_illegal_input_raises_and_the_failure_is_sticky() -> None:
    s = ready()
    assert (State.MAIL, events.MessageReceived) not in table.TABLE
    with pytest.raises(LocalProtocolError, match="MessageReceived illegal in state mail"):
        s.handle(events.MessageReceived(10))
    with pytest.raises(LocalProtocolError, match="already failed"):
        s.handle(events.ClientCommand(parse_command(b"NOOP\r\n")))
    assert not s.pipelinable(parse_command(MAIL))


def test_a_reply_is_legal_by_the_exchange_it_answers() -> None:
    s = ready()
    s.handle(events.ClientCommand(parse_command(b"NOOP\r\n")))
    s.exchanges[0] = SendUpstream(b"DATA\r\n", Purpose.DATA)  # our DATA, outside a message
    with pytest.raises(LocalProtocolError, match="illegal in state"):
        s.handle(events.UpstreamReply(OK))
    with pytest.raises(LocalProtocolError, match="already failed"):
        s.handle(events.UpstreamReply(OK))


def test_a_move_outside_the_entrys_targets_is_our_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    s = ready()
    key = (State.MAIL, events.CommandTooLong)
    move = table.TABLE[key]
    monkeypatch.setitem(table.TABLE, key, table.Move(move.handler, frozenset({State.RCPT})))
    with pytest.raises(LocalProtocolError, match="moved the session"):
        s.handle(events.CommandTooLong())
    with pytest.raises(LocalProtocolError, match="already failed"):
        s.handle(events.CommandTooLong())


def test_the_facts_the_relay_learns_are_events_before_the_banner() -> None:
    s = Session(SessionPolicy(client="c", xclient=True))
    assert s.handle(events.ClientTLSActive()) == []
    assert s.handle(events.UpstreamTLSActive()) == []
    assert s.handle(events.ClientNameKnown("host.example")) == []
    assert s.tls and s.upstream_tls and s.policy.xclient_name == "host.example"
    s.handle(events.Greeting(Reply.single(220, "up")))
    with pytest.raises(LocalProtocolError):
        s.handle(events.ClientNameKnown("late.example"))  # only while connecting


# -- the gates -----------------------------------------------------------------------------


def test_the_gates_are_one_ordered_list() -> None:
    assert tuple(g for g in gates.GATES if not g.entry) == gates.DISPATCH_GATES
    for verb in Verb:
        assert gates._BY_VERB[verb] == tuple(g for g in gates.GATES if verb in g.verbs)
    assert len({gate.name for gate in gates.GATES}) == len(gates.GATES)


def test_dispatch_and_pipelinable_consult_the_same_gates(monkeypatch: pytest.MonkeyPatch) -> None:
    s = ready()
    mail = parse_command(MAIL)
    assert s.pipelinable(mail)  # no gate applies: forwarded as is, may join a group
    answer = [SendClient(Reply.single(451, "4.3.0 gate"))]

    def applies(session: Session, command: Command) -> bool:
        return True

    def answered(session: Session, command: Command) -> list[Action]:
        return list(answer)

    fake = Gate("fake", frozenset({Verb.MAIL}), applies, answered)
    monkeypatch.setitem(gates._BY_VERB, Verb.MAIL, (*gates._BY_VERB[Verb.MAIL], fake))
    assert not s.pipelinable(mail)
    assert s.handle(events.ClientCommand(mail)) == answer


@pytest.mark.parametrize(
    ("policy", "line"),
    [
        (SessionPolicy(client="c", filtering=False, reject=Reply.single(554, "no")), MAIL),
        (
            SessionPolicy(client="c", filtering=False, max_message_size=10),
            b"MAIL FROM:<s@x> SIZE=99\r\n",
        ),
        (SessionPolicy(client="c", filtering=False, milters=True), MAIL),
    ],
)
def test_a_command_a_gate_answers_is_never_pipelined(policy: SessionPolicy, line: bytes) -> None:
    s = ready(policy)
    command = parse_command(line)
    assert not s.pipelinable(command)
    actions = s.handle(events.ClientCommand(command))
    assert not any(isinstance(a, SendUpstream) and a.purpose is Purpose.COMMAND for a in actions)


# -- only the session writes its state -----------------------------------------------------


def _session_writes(path: Path) -> list[str]:
    """Assignments to an attribute of something named `session` (or `X.session`), at any
    depth (`session.envelope.sender = ...` too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            value = target.value if isinstance(target, ast.Attribute) else None
            while isinstance(value, ast.Attribute | ast.Subscript):
                if isinstance(value, ast.Attribute) and value.attr == "session":
                    break
                value = value.value
            if (isinstance(value, ast.Attribute) and value.attr == "session") or (
                isinstance(value, ast.Name) and value.id == "session"
            ):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(target)}")
    return found


def _holds_the_smtp_session(path: Path) -> bool:
    """The module can hold a protocol Session: it imports the session package.  (Others
    have sessions of their own: the milter client's, the fake upstream's.)"""
    tree = ast.parse(path.read_text(), str(path))
    return any(
        isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("trio_proxsmtp.protocol.session")
        for node in ast.walk(tree)
    )


def test_nothing_outside_the_session_package_writes_the_session() -> None:
    package = Path(trio_proxsmtp.__file__).parent
    own = package / "protocol" / "session"
    checked, writes = 0, []
    for path in sorted(package.rglob("*.py")):
        if own in path.parents or not _holds_the_smtp_session(path):
            continue
        checked += 1
        writes += _session_writes(path)
    assert checked >= 3  # connection, transaction, client_channel at least
    assert writes == []


def test_the_write_finder_finds_writes(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "self.session.tls = True\nsession.policy = p\nx.session.envelope.sender = 's'\n"
        "self.session = make()\nsession.errors += 1\n"
    )
    assert len(_session_writes(sample)) == 4
