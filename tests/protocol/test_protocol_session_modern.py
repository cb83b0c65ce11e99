"""The sans-IO session's modern paths: STARTTLS to the next server, AUTH over TLS, the
pipelinable test, and BDAT chunks (driven by hand, no Trio)."""

from __future__ import annotations

import pytest

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.message.summary import Status
from trio_proxsmtp.protocol.session.actions import (
    Close,
    Purpose,
    ReceiveChunk,
    RunFilter,
    SendClient,
    SendMessage,
    SendUpstream,
    SkipBytes,
    StartUpstreamTLS,
    Summary,
)
from trio_proxsmtp.protocol.session.delivery import filter_status
from trio_proxsmtp.protocol.session.events import (
    ChunkReceived,
    ClientCommand,
    ClientTLSActive,
    FilterDone,
    Greeting,
    UpstreamReply,
    UpstreamTLSActive,
    UpstreamTLSStarted,
)
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.smtp.commands import parse_command
from trio_proxsmtp.protocol.smtp.replies import Reply

OK = Reply.single(250, "2.0.0 Ok")
BANNER = Reply.single(220, "up.example ESMTP")
PLAIN_EHLO = Reply(250, ("up.example", "PIPELINING", "STARTTLS", "CHUNKING"))
TLS_EHLO = Reply(250, ("up.example", "PIPELINING", "AUTH PLAIN", "CHUNKING"))
MAY = SessionPolicy(client="c", filtering=False, upstream_starttls=True)
ENCRYPT = SessionPolicy(
    client="c", filtering=False, upstream_starttls=True, upstream_tls_required=True
)


def session(policy: SessionPolicy) -> Session:
    s = Session(policy)
    s.handle(Greeting(BANNER))
    return s


def test_first_ehlo_upgrades_then_relays_the_new_reply() -> None:
    s = session(MAY)
    command = parse_command(b"EHLO c\r\n")
    [ehlo] = s.handle(ClientCommand(command))
    assert ehlo == SendUpstream(b"EHLO c\r\n", Purpose.UPSTREAM_EHLO, command)
    [starttls] = s.handle(UpstreamReply(PLAIN_EHLO))
    assert starttls == SendUpstream(b"STARTTLS\r\n", Purpose.UPSTREAM_STARTTLS, command)
    assert s.handle(UpstreamReply(Reply.single(220, "go"))) == [StartUpstreamTLS(command)]
    [again] = s.handle(UpstreamTLSStarted(command))
    assert again == SendUpstream(b"EHLO c\r\n", Purpose.COMMAND, command)
    [reply] = s.handle(UpstreamReply(TLS_EHLO))
    assert isinstance(reply, SendClient) and "AUTH PLAIN" in reply.reply.lines
    assert s.upstream_tls and s.state is State.MAIL
    # A later EHLO (after the client's own STARTTLS, say) is just forwarded.
    [later] = s.handle(ClientCommand(parse_command(b"EHLO c\r\n")))
    assert isinstance(later, SendUpstream) and later.purpose is Purpose.COMMAND


def test_helo_is_upgraded_with_an_ehlo_of_its_name() -> None:
    s = session(MAY)
    [ehlo] = s.handle(ClientCommand(parse_command(b"HELO client.example\r\n")))
    assert isinstance(ehlo, SendUpstream) and ehlo.line == b"EHLO client.example\r\n"


def test_encrypt_closes_when_starttls_is_refused() -> None:
    s = session(ENCRYPT)
    s.handle(ClientCommand(parse_command(b"EHLO c\r\n")))
    s.handle(UpstreamReply(PLAIN_EHLO))
    actions = s.handle(UpstreamReply(Reply.single(454, "4.7.0 no TLS today")))
    assert isinstance(actions[-1], Close)
    sent = [a for a in actions if isinstance(a, SendClient)]
    assert sent[0].reply.code == 421 and not any(isinstance(a, SendUpstream) for a in actions)


def test_may_relays_the_plain_reply_when_starttls_is_refused() -> None:
    s = session(MAY)
    s.handle(ClientCommand(parse_command(b"EHLO c\r\n")))
    s.handle(UpstreamReply(PLAIN_EHLO))
    actions = s.handle(UpstreamReply(Reply.single(454, "4.7.0 no TLS today")))
    [reply] = [a for a in actions if isinstance(a, SendClient)]
    assert reply.reply.code == 250 and not s.upstream_tls


def test_auth_over_tls_needs_a_tls_upstream() -> None:
    s = session(SessionPolicy(client="c", starttls=True))
    s.handle(ClientTLSActive())  # the client did STARTTLS (or came by ListenTLS)
    actions = s.handle(ClientCommand(parse_command(b"AUTH PLAIN AGEAYg==\r\n")))
    [reply] = [a for a in actions if isinstance(a, SendClient)]
    assert reply.reply.code == 538
    s.handle(UpstreamTLSActive())
    [forwarded] = s.handle(ClientCommand(parse_command(b"AUTH PLAIN AGEAYg==\r\n")))
    assert isinstance(forwarded, SendUpstream)


def test_pipelinable_only_mail_and_rcpt_to_a_pipelining_upstream() -> None:
    s = session(SessionPolicy(client="c", filtering=False))
    s.handle(ClientCommand(parse_command(b"EHLO c\r\n")))
    s.handle(UpstreamReply(TLS_EHLO))
    assert s.pipelinable(parse_command(b"MAIL FROM:<a@x>\r\n"))
    assert s.pipelinable(parse_command(b"RCPT TO:<a@x>\r\n"))
    assert not s.pipelinable(parse_command(b"DATA\r\n"))
    assert not s.pipelinable(parse_command(b"NOOP\r\n"))
    s.handle(ClientCommand(parse_command(b"EHLO c\r\n")))
    s.handle(UpstreamReply(Reply(250, ("up.example", "SIZE 1000"))))
    assert not s.pipelinable(parse_command(b"MAIL FROM:<a@x>\r\n"))


def chunking_session() -> Session:
    s = session(SessionPolicy(client="c", filtering=False, chunking=True))
    s.handle(ClientCommand(parse_command(b"EHLO c\r\n")))
    [reply] = s.handle(UpstreamReply(TLS_EHLO))
    assert isinstance(reply, SendClient) and "CHUNKING" in reply.reply.lines
    s.handle(ClientCommand(parse_command(b"MAIL FROM:<a@x>\r\n")))
    s.handle(UpstreamReply(OK))
    s.handle(ClientCommand(parse_command(b"RCPT TO:<b@x>\r\n")))
    s.handle(UpstreamReply(OK))
    return s


def test_bdat_chunks_then_bdat_upstream() -> None:
    s = chunking_session()
    assert s.handle(ClientCommand(parse_command(b"BDAT 10\r\n"))) == [ReceiveChunk(10, False)]
    assert s.in_message and s.state is State.CHUNKS
    [ack] = s.handle(ChunkReceived(10, False, 10))
    assert isinstance(ack, SendClient) and ack.reply.code == 250
    assert s.handle(ClientCommand(parse_command(b"BDAT 5 LAST\r\n"))) == [ReceiveChunk(5, True)]
    assert s.handle(ChunkReceived(5, True, 15)) == [SendMessage(bdat=True)]
    [final, _summary] = s.handle(UpstreamReply(OK))
    assert final == SendClient(OK) and s.state is State.MAIL


def test_bdat_message_summary_has_its_size_and_delays() -> None:
    """receive: from the first chunk to the end of the LAST (as the relay measured it)."""
    s = chunking_session()
    s.handle(ClientCommand(parse_command(b"BDAT 10\r\n")))
    s.handle(ChunkReceived(10, False, 10, seconds=1.0))
    s.handle(ClientCommand(parse_command(b"BDAT 5 LAST\r\n")))
    assert s.handle(ChunkReceived(5, True, 15, seconds=3.0)) == [SendMessage(bdat=True)]
    [_final, summary] = s.handle(UpstreamReply(OK, seconds=0.5))
    assert isinstance(summary, Summary) and summary.outcome is Status.PASSED
    assert summary.text.endswith("size=15, delay=3.50, delays=3.00/0.00/0.50")


def test_bdat_refusals_skip_the_chunk() -> None:
    s = session(SessionPolicy(client="c", chunking=True))
    s.handle(ClientCommand(parse_command(b"EHLO c\r\n")))
    s.handle(UpstreamReply(TLS_EHLO))
    actions = s.handle(ClientCommand(parse_command(b"BDAT 7 LAST\r\n")))
    assert actions[0] == SkipBytes(7) and isinstance(actions[1], SendClient)
    assert actions[1].reply.code == 503


def test_bdat_with_a_filter_runs_it_at_last() -> None:
    s = session(SessionPolicy(client="c", filtering=True, chunking=True))
    s.handle(ClientCommand(parse_command(b"EHLO c\r\n")))
    s.handle(UpstreamReply(TLS_EHLO))
    for line in (b"MAIL FROM:<a@x>\r\n", b"RCPT TO:<b@x>\r\n"):
        s.handle(ClientCommand(parse_command(line)))
        s.handle(UpstreamReply(OK))
    s.handle(ClientCommand(parse_command(b"BDAT 3 LAST\r\n")))
    assert s.handle(ChunkReceived(3, True, 3)) == [RunFilter()]
    assert s.handle(FilterDone(True, None, filter_status(s))) == [SendMessage(bdat=True)]


def test_chunk_received_outside_chunks_is_our_bug() -> None:
    s = chunking_session()
    with pytest.raises(LocalProtocolError):
        s.handle(ChunkReceived(1, True, 1))
