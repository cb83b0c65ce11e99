"""The sans-IO session: every state, transition and action, driven by hand (no Trio)."""

from __future__ import annotations

import logging

import pytest

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.message.summary import Status
from trio_proxsmtp.protocol.session.actions import (
    Action,
    Close,
    Log,
    Purpose,
    ReceiveMessage,
    RunFilter,
    SendClient,
    SendMessage,
    SendUpstream,
    SkipBytes,
    StartTLS,
    Summary,
)
from trio_proxsmtp.protocol.session.events import (
    ClientCommand,
    ClientTLSStarted,
    CommandTooLong,
    ConnectionEnded,
    FilterDone,
    Greeting,
    MessageFailed,
    MessageReceived,
    MessageStreamed,
    UpstreamReply,
)
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.protocol.session.wire import (
    INSUFFICIENT_AUTHORIZATION,
    LINE_TOO_LONG,
    MESSAGE_TOO_BIG,
    NEED_MAIL,
    NO_VALID_RECIPIENTS,
    NOT_IMPLEMENTED,
    START_MAIL_INPUT,
    XCLIENT_REFUSED,
)
from trio_proxsmtp.protocol.smtp.commands import parse_command
from trio_proxsmtp.protocol.smtp.replies import Reply

OK = Reply.single(250, "2.0.0 Ok")
EHLO_REPLY = Reply(
    250, ("up.example", "PIPELINING", "SIZE 1000", "XCLIENT NAME ADDR HELO", "AUTH PLAIN")
)
EHLO_NO_XCLIENT = Reply(250, ("up.example", "SIZE 1000"))
RELAY = "192.0.2.25:25"  # where the relay says it connected


class Driver:
    """Plays the relay: performs SendUpstream actions with scripted upstream replies."""

    def __init__(self, policy: SessionPolicy | None = None) -> None:
        self.session = Session(policy or SessionPolicy(client="192.0.2.1"))
        self.upstream: list[bytes] = []
        self.client: list[Reply] = []
        self.other: list[Action] = []

    def run(self, actions: list[Action], replies: list[Reply]) -> None:
        for action in actions:
            if isinstance(action, SendUpstream):
                self.upstream.append(action.line)
                self.run(
                    self.session.handle(UpstreamReply(replies.pop(0), exchange=action)), replies
                )
            elif isinstance(action, SendClient):
                self.client.append(action.reply)
            else:
                self.other.append(action)

    def greet(self) -> None:
        self.run(
            self.session.handle(Greeting(Reply.single(220, "up.example ESMTP"), relay=RELAY)), []
        )

    def command(self, line: str, *replies: Reply) -> list[Reply]:
        before = len(self.client)
        pending = list(replies)
        self.run(
            self.session.handle(ClientCommand(parse_command(line.encode() + b"\r\n"))), pending
        )
        assert pending == [], "not every scripted reply was used"
        return self.client[before:]

    def summaries(self) -> list[Summary]:
        return [a for a in self.other if isinstance(a, Summary)]

    def logs(self) -> list[Log]:
        return [a for a in self.other if isinstance(a, Log)]


def state_of(session: Session) -> State:
    """The current state (a call, so that mypy does not narrow it across transitions)."""
    return session.state


def ready(policy: SessionPolicy | None = None, ehlo: Reply = EHLO_REPLY) -> Driver:
    d = Driver(policy)
    d.greet()
    d.command("EHLO c", ehlo)
    return d


def with_envelope(d: Driver) -> None:
    d.command("MAIL FROM:<s@x>", OK)
    d.command("RCPT TO:<r@x>", OK)


# -- greeting and HELO ------------------------------------------------------------------


def test_greeting_rewritten_and_moves_to_helo() -> None:
    d = Driver()
    assert state_of(d.session) is State.GREETING
    d.greet()
    assert d.client == [Reply.single(220, "smtp.passthru")]
    assert state_of(d.session) is State.HELO


def test_multiline_or_refusing_banner_relayed() -> None:
    s = Session(SessionPolicy(client="c"))
    banner = Reply(220, ("a", "b"))
    assert s.handle(Greeting(banner)) == [SendClient(banner)]
    s = Session(SessionPolicy(client="c"))
    refusal = Reply.single(554, "go away")
    assert s.handle(Greeting(refusal)) == [SendClient(refusal)]


def test_command_before_greeting_is_our_bug() -> None:
    s = Session(SessionPolicy(client="c"))
    with pytest.raises(LocalProtocolError):
        s.handle(ClientCommand(parse_command(b"HELO c\r\n")))
    with pytest.raises(LocalProtocolError):
        s.handle(CommandTooLong())


def test_second_greeting_is_our_bug() -> None:
    d = Driver()
    d.greet()
    with pytest.raises(LocalProtocolError):
        d.session.handle(Greeting(Reply.single(220, "again")))


def test_ehlo_rewritten_and_extensions_stripped() -> None:
    d = Driver()
    d.greet()
    [reply] = d.command("EHLO c", EHLO_REPLY)
    assert reply == Reply(250, ("smtp.passthru", "SIZE 1000", "AUTH PLAIN"))
    assert d.upstream == [b"EHLO c\r\n"]
    assert state_of(d.session) is State.MAIL
    assert d.session.extensions.size_limit == 1000


def test_helo_rewritten() -> None:
    d = Driver()
    d.greet()
    assert d.command("HELO c", Reply.single(250, "up.example")) == [
        Reply.single(250, "smtp.passthru")
    ]
    assert state_of(d.session) is State.MAIL


def test_refused_ehlo_relayed_and_state_kept() -> None:
    d = Driver()
    d.greet()
    refusal = Reply.single(550, "no")
    assert d.command("EHLO c", refusal) == [refusal]
    assert state_of(d.session) is State.HELO


def test_line_too_long_answered_locally() -> None:
    d = ready()
    assert d.session.handle(CommandTooLong()) == [SendClient(LINE_TOO_LONG)]


def test_other_commands_forwarded_verbatim() -> None:
    d = ready()
    reply = Reply.single(252, "maybe")
    assert d.command("VRFY  someone", reply) == [reply]
    assert d.upstream[-1] == b"VRFY  someone\r\n"


def test_quit_closes_after_reply() -> None:
    d = ready()
    bye = Reply.single(221, "Bye")
    assert d.command("QUIT", bye) == [bye]
    assert any(isinstance(a, Close) for a in d.other)
    assert state_of(d.session) is State.QUIT
    with pytest.raises(LocalProtocolError):
        d.session.handle(ClientCommand(parse_command(b"NOOP\r\n")))


# -- local replies ------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["STARTTLS", "BDAT 0 LAST", "bdat x"])
def test_starttls_and_bdat_refused_locally(line: str) -> None:
    d = ready()
    actions = d.session.handle(ClientCommand(parse_command(line.encode() + b"\r\n")))
    assert actions == [SendClient(NOT_IMPLEMENTED)]


def test_bdat_chunk_skipped_never_read_as_commands() -> None:
    d = ready()
    actions = d.session.handle(ClientCommand(parse_command(b"BDAT 42 LAST\r\n")))
    assert actions == [SkipBytes(42), SendClient(NOT_IMPLEMENTED)]


def test_client_xclient_refused_with_warning() -> None:
    d = ready()
    actions = d.session.handle(ClientCommand(parse_command(b"XCLIENT ADDR=6.6.6.6\r\n")))
    assert SendClient(INSUFFICIENT_AUTHORIZATION) in actions
    assert any(isinstance(a, Log) and a.level == logging.WARNING for a in actions)
    assert not any(isinstance(a, SendUpstream) for a in actions)


# -- the envelope ---------------------------------------------------------------------------


def test_envelope_recorded_from_positive_replies_only() -> None:
    d = ready()
    d.command("MAIL FROM:<s@x> SIZE=10", OK)
    assert state_of(d.session) is State.RCPT
    d.command("RCPT TO:<a@x>", OK)
    d.command("RCPT TO:<reject@x>", Reply.single(550, "no"))
    d.command("RCPT TO: <b@x> NOTIFY=NEVER", OK)
    assert d.session.envelope.sender == "s@x"
    assert d.session.envelope.recipients == ["a@x", "b@x"]


def test_refused_mail_records_nothing() -> None:
    d = ready()
    d.command("MAIL FROM:<s@x>", Reply.single(550, "no"))
    assert d.session.envelope.sender is None
    assert state_of(d.session) is State.MAIL


def test_multiline_rcpt_reply_recorded_once() -> None:
    d = ready()
    d.command("MAIL FROM:<s@x>", OK)
    d.command("RCPT TO:<r@x>", Reply(250, ("first", "second")))
    assert d.session.envelope.recipients == ["r@x"]


def test_null_sender_and_unbracketed_sender() -> None:
    d = ready()
    d.command("MAIL FROM:<>", OK)
    assert d.session.envelope.sender == "<>"
    d.command("RSET", OK)
    d.command("MAIL FROM: p@x SIZE=10", OK)
    assert d.session.envelope.sender == "p@x"


def test_rcpt_before_mail_not_recorded() -> None:
    d = ready()
    d.command("RCPT TO:<r@x>", OK)  # an upstream that says yes anyway
    assert d.session.envelope.recipients == []


def test_rset_resets_envelope() -> None:
    d = ready()
    with_envelope(d)
    d.command("RSET", OK)
    assert d.session.envelope.sender is None and d.session.envelope.recipients == []
    assert state_of(d.session) is State.MAIL


def test_refused_rset_keeps_envelope() -> None:
    d = ready()
    with_envelope(d)
    d.command("RSET", Reply.single(500, "no"))
    assert d.session.envelope.recipients == ["r@x"]


def test_ehlo_resets_envelope_and_xforward() -> None:
    d = ready()
    d.command("XFORWARD ADDR=1.2.3.4", OK)
    with_envelope(d)
    d.command("EHLO again", EHLO_REPLY)
    envelope = d.session.envelope
    assert (envelope.sender, envelope.recipients, envelope.remote_addr) == (None, [], None)


def test_xforward_recorded_when_accepted_and_kept_over_mail() -> None:
    d = ready()
    d.command("XFORWARD HELO = [weird helo] ADDR=[IPv6:2001:db8::1]", OK)
    d.command("MAIL FROM:<s@x>", OK)
    assert d.session.envelope.remote_addr == "IPv6:2001:db8::1"
    assert d.session.envelope.remote_helo == "weird helo"


def test_xforward_refused_not_recorded() -> None:
    d = ready()
    d.command("XFORWARD ADDR=1.2.3.4", Reply.single(550, "no"))
    assert d.session.envelope.remote_addr is None


def test_xforward_name_does_not_hide_addr() -> None:
    d = ready()
    d.command("XFORWARD NAME=addr.example ADDR=1.2.3.4", OK)
    assert d.session.envelope.remote_addr == "1.2.3.4"


def test_xforward_values_are_xtext_decoded() -> None:
    d = ready()
    d.command("XFORWARD HELO=odd+20helo+2Bplus ADDR=192.0.2.7", OK)
    assert d.session.envelope.remote_helo == "odd helo+plus"
    assert d.session.envelope.remote_addr == "192.0.2.7"


def test_xforward_unavailable_clears_the_value() -> None:
    d = ready()
    d.command("XFORWARD ADDR=192.0.2.7 HELO=h.example", OK)
    d.command("XFORWARD ADDR=[UNAVAILABLE] HELO=[TEMPUNAVAIL]", OK)
    assert (d.session.envelope.remote_addr, d.session.envelope.remote_helo) == (None, None)


# -- AUTH ----------------------------------------------------------------------------------


def test_auth_exchange_marks_authenticated() -> None:
    d = ready()
    assert d.command("AUTH LOGIN", Reply.single(334, "VXNlcm5hbWU6"))[0].code == 334
    # Continuation lines go upstream as they are, whatever they look like.
    d.command("MAIL FROM:<looks-like-a-command>", Reply.single(334, "UGFzc3dvcmQ6"))
    assert d.session.envelope.sender is None
    d.command("c2VjcmV0", Reply.single(235, "ok"))
    assert d.session.authenticated
    assert d.upstream[-2:] == [b"MAIL FROM:<looks-like-a-command>\r\n", b"c2VjcmV0\r\n"]
    # Authenticated for the rest of the connection: RSET and EHLO do not clear it.
    d.command("RSET", OK)
    d.command("EHLO c", EHLO_REPLY)
    assert d.session.authenticated


def test_auth_failure_not_authenticated() -> None:
    d = ready()
    d.command("AUTH PLAIN AGFAYg==", Reply.single(535, "no"))
    assert not d.session.authenticated
    # Back in command mode: a MAIL is a MAIL again.
    d.command("MAIL FROM:<s@x>", OK)
    assert d.session.envelope.sender == "s@x"


def test_235_without_auth_warns_and_does_not_authenticate() -> None:
    d = ready()
    d.command("NOOP", Reply.single(235, "weird"))
    assert not d.session.authenticated
    assert any("without AUTH" in log.message for log in d.logs())


# -- DATA ------------------------------------------------------------------------------------


def test_data_gives_354_and_receives() -> None:
    d = ready()
    with_envelope(d)
    actions = d.session.handle(ClientCommand(parse_command(b"DATA\r\n")))
    assert actions == [SendClient(START_MAIL_INPUT), ReceiveMessage(stream=False)]
    assert state_of(d.session) is State.DATA
    assert b"DATA\r\n" not in d.upstream


def test_data_without_mail_refused_locally() -> None:
    d = ready()
    assert d.command("DATA") == [NEED_MAIL]
    assert state_of(d.session) is State.MAIL


def test_data_without_accepted_rcpt_refused_locally() -> None:
    d = ready()
    d.command("MAIL FROM:<s@x>", OK)
    d.command("RCPT TO:<reject@x>", Reply.single(550, "no"))
    assert d.command("DATA") == [NO_VALID_RECIPIENTS]
    assert state_of(d.session) is State.RCPT


def test_command_in_data_state_is_our_bug() -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")
    with pytest.raises(LocalProtocolError):
        d.session.handle(ClientCommand(parse_command(b"NOOP\r\n")))


def test_filtered_message_full_cycle() -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")
    assert d.session.handle(MessageReceived(10, seconds=0.5)) == [RunFilter()]
    assert state_of(d.session) is State.FILTERING
    actions = d.session.handle(FilterDone(True, None, Status.FILTERED, seconds=1.25))
    assert actions == [SendUpstream(b"DATA\r\n", Purpose.DATA)]
    assert state_of(d.session) is State.REPLAY
    follow = d.session.handle(
        UpstreamReply(Reply.single(354, "go"), seconds=0.01, exchange=actions[0])
    )
    assert follow == [SendMessage()]
    final = Reply.single(250, "2.0.0 queued")
    done = d.session.handle(UpstreamReply(final, seconds=0.24, exchange=follow[0]))
    assert done[0] == SendClient(final)
    [summary] = [a for a in done if isinstance(a, Summary)]
    assert summary.outcome is Status.FILTERED
    assert summary.upstream_code == 250
    # The stages' durations come in with the inputs that end them; upstream is our DATA
    # plus the message and its final ".".
    assert summary.text == (
        "client=192.0.2.1, from=<s@x>, to=<r@x>, status=FILTERED, upstream=250 2.0.0 queued, "
        f"relay={RELAY}, size=10, delay=2.00, delays=0.50/1.25/0.25"
    )
    assert state_of(d.session) is State.MAIL
    assert d.session.envelope.sender is None
    assert d.session.messages == 1


def test_no_filter_goes_straight_to_replay_and_passed() -> None:
    d = ready(SessionPolicy(client="c", filtering=False))
    with_envelope(d)
    d.command("DATA")
    actions = d.session.handle(MessageReceived(5))
    assert actions == [SendUpstream(b"DATA\r\n", Purpose.DATA)]
    follow = d.session.handle(UpstreamReply(Reply.single(354, "go"), exchange=actions[0]))
    done = d.session.handle(UpstreamReply(OK, exchange=follow[0]))
    [summary] = [a for a in done if isinstance(a, Summary)]
    assert summary.outcome is Status.PASSED
    assert summary.text.startswith("client=c, from=<s@x>, to=<r@x>, status=PASSED, upstream=250")


def test_upstream_refuses_data_final_reply_rset_and_logged() -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")
    d.session.handle(MessageReceived(10))
    [data] = d.session.handle(FilterDone(True, None, Status.FILTERED))
    refusal = Reply.single(554, "5.5.1 no valid recipients")
    actions = d.session.handle(UpstreamReply(refusal, exchange=data))
    assert actions[0] == SendClient(refusal)
    assert SendUpstream(b"RSET\r\n", Purpose.RSET) in actions
    [summary] = [a for a in actions if isinstance(a, Summary)]
    assert "upstream=554 5.5.1 no valid recipients" in summary.text
    assert state_of(d.session) is State.MAIL


def test_filter_rejects() -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")
    d.session.handle(MessageReceived(10))
    reply = Reply.single(550, "Content Rejected; Virus found")
    actions = d.session.handle(FilterDone(False, reply, Status.REJECTED, "Virus found"))
    assert actions[:2] == [SendClient(reply), SendUpstream(b"RSET\r\n", Purpose.RSET)]
    summary = actions[2]
    assert isinstance(summary, Summary)
    assert summary.text == (
        "client=192.0.2.1, from=<s@x>, to=<r@x>, status=REJECTED, "
        "reason=550 Content Rejected; Virus found, relay=none, size=10, delay=0.00, "
        "delays=0.00/0.00/0.00"
    )
    assert summary.upstream_code is None
    assert state_of(d.session) is State.MAIL


def test_filter_drops_silently() -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")
    d.session.handle(MessageReceived(10))
    reply = Reply.single(250, "Dropped")
    actions = d.session.handle(FilterDone(False, reply, Status.DROPPED))
    assert actions[:2] == [SendClient(reply), SendUpstream(b"RSET\r\n", Purpose.RSET)]
    assert isinstance(actions[2], Summary) and "status=DROPPED" in actions[2].text


def test_filter_error_summary_has_detail() -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")
    d.session.handle(MessageReceived(10))
    actions = d.session.handle(
        FilterDone(
            False, Reply.single(451, "Local Error"), Status.FILTER_ERROR, "killed by signal 9"
        )
    )
    summary = actions[-1]
    assert isinstance(summary, Summary)
    assert "status=FILTER-ERROR, reason=killed by signal 9" in summary.text


def test_rejection_without_reply_is_our_bug() -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")
    d.session.handle(MessageReceived(10))
    with pytest.raises(LocalProtocolError):
        d.session.handle(FilterDone(False, None, Status.REJECTED))


def test_filter_done_outside_filtering_is_our_bug() -> None:
    d = ready()
    with pytest.raises(LocalProtocolError):
        d.session.handle(FilterDone(True, None, Status.FILTERED))


def test_message_received_outside_data_is_our_bug() -> None:
    d = ready()
    with pytest.raises(LocalProtocolError):
        d.session.handle(MessageReceived(1))
    with pytest.raises(LocalProtocolError):
        d.session.handle(MessageFailed(Reply.single(451, "x"), "x"))


def test_reply_without_pending_action_is_our_bug() -> None:
    d = ready()
    for action in (RunFilter(), SendClient(OK), ReceiveMessage(stream=False), SendMessage()):
        with pytest.raises(LocalProtocolError):
            d.session.handle(UpstreamReply(OK, exchange=action))


def test_size_over_advertised_limit_gets_552() -> None:
    d = ready()  # SIZE 1000
    with_envelope(d)
    d.command("DATA")
    actions = d.session.handle(MessageReceived(1001))
    assert actions[:2] == [SendClient(MESSAGE_TOO_BIG), SendUpstream(b"RSET\r\n", Purpose.RSET)]
    assert isinstance(actions[2], Summary) and actions[2].outcome is Status.TOO_BIG
    assert state_of(d.session) is State.MAIL


def test_size_at_limit_accepted() -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")
    assert d.session.handle(MessageReceived(1000)) == [RunFilter()]


# -- MaxMessageSize ------------------------------------------------------------------------


def limited(limit: int, ehlo: Reply = EHLO_REPLY) -> Driver:
    return ready(SessionPolicy(client="c", max_message_size=limit), ehlo)


@pytest.mark.parametrize(
    ("limit", "ehlo", "advertised", "effective"),
    [
        (500, EHLO_REPLY, "SIZE 500", 500),  # ours is smaller: it replaces the upstream's
        (5000, EHLO_REPLY, "SIZE 1000", 1000),  # the upstream's is smaller: it stays
        (500, Reply(250, ("up.example", "8BITMIME")), "SIZE 500", 500),  # none upstream
    ],
)
def test_max_message_size_is_advertised_and_the_smaller_limit_wins(
    limit: int, ehlo: Reply, advertised: str, effective: int
) -> None:
    d = limited(limit, ehlo)
    reply = d.client[-1]  # after the banner
    assert [line for line in reply.lines if line.startswith("SIZE")] == [advertised]
    assert reply.lines[0] == "smtp.passthru"
    assert d.session.size_limit == effective


def test_max_message_size_keeps_the_filtered_marker_last() -> None:
    d = limited(500, Reply(250, ("up.example", "SIZE 1000", "STARTTLS")))
    assert d.client[-1] == Reply(250, ("smtp.passthru", "SIZE 500", "XFILTERED"))


@pytest.mark.parametrize(
    ("upstream", "advertised"),
    [
        # The upstream's own line is kept, once.
        (("up.example", "PIPELINING", "SIZE 1000"), ("SIZE 1000", "PIPELINING")),
        # The upstream cannot pipeline: we still can (it is spoken to lock-step).
        (("up.example", "SIZE 1000"), ("SIZE 1000", "PIPELINING")),
        # A stripped last line: XFILTERED stays last.
        (("up.example", "SIZE 1000", "STARTTLS"), ("SIZE 1000", "PIPELINING", "XFILTERED")),
    ],
)
def test_pipelining_is_advertised_when_configured(
    upstream: tuple[str, ...], advertised: tuple[str, ...]
) -> None:
    d = ready(SessionPolicy(client="c", pipelining=True), Reply(250, upstream))
    assert d.client[-1] == Reply(250, ("smtp.passthru", *advertised))


# -- STARTTLS ------------------------------------------------------------------------------

TLS = SessionPolicy(client="c", starttls=True)
UPSTREAM_TLS = Reply(250, ("up.example", "STARTTLS", "SIZE 1000"))


def test_starttls_is_ours_advertised_and_answered_without_the_upstream() -> None:
    d = ready(TLS, UPSTREAM_TLS)
    assert d.client[-1] == Reply(250, ("smtp.passthru", "SIZE 1000", "STARTTLS"))
    actions = d.session.handle(ClientCommand(parse_command(b"STARTTLS\r\n")))
    assert actions == [SendClient(Reply.single(220, "2.0.0 Ready to start TLS")), StartTLS()]
    assert d.upstream == [b"EHLO c\r\n"]


def test_after_the_handshake_the_client_starts_over() -> None:
    d = ready(TLS)
    d.command("XFORWARD ADDR=192.0.2.7", OK)
    d.session.handle(ClientTLSStarted())
    assert (state_of(d.session), d.session.tls, d.session.helo_name) == (State.HELO, True, None)
    assert d.session.envelope.remote_addr is None  # nothing said before TLS is kept
    [reply] = d.command("EHLO c", EHLO_REPLY)
    assert "STARTTLS" not in reply.lines
    assert d.command("STARTTLS") == [Reply.single(503, "5.5.1 Error: TLS already active")]


@pytest.mark.parametrize(
    ("line", "code"),
    [("STARTTLS now", 501), ("STARTTLS", 503)],  # parameters; an open transaction
)
def test_starttls_refusals(line: str, code: int) -> None:
    d = ready(TLS)
    if code == 503:
        d.command("MAIL FROM:<s@x>", OK)
    [reply] = d.command(line)
    assert reply.code == code and not d.session.tls
    assert b"STARTTLS" not in b"".join(d.upstream)


def test_starttls_without_a_certificate_is_not_implemented() -> None:
    d = ready()
    assert d.command("STARTTLS") == [NOT_IMPLEMENTED]


def test_pipelining_is_stripped_by_default() -> None:
    d = ready()
    assert "PIPELINING" not in d.client[-1].lines


def test_without_max_message_size_the_ehlo_reply_is_untouched() -> None:
    d = ready(ehlo=Reply(250, ("up.example", "8BITMIME")))
    assert d.client[-1] == Reply(250, ("smtp.passthru", "8BITMIME"))
    assert d.session.size_limit is None


def test_mail_declaring_more_than_max_message_size_is_refused_without_the_upstream() -> None:
    d = limited(500)
    assert d.command("MAIL FROM:<s@x> SIZE=501") == [MESSAGE_TOO_BIG]
    assert d.upstream == [b"EHLO c\r\n"] and state_of(d.session) is State.MAIL
    assert any("MaxMessageSize" in log.message for log in d.logs())
    d.command("MAIL FROM:<s@x> SIZE=500", OK)  # at the limit: forwarded
    assert d.upstream[-1] == b"MAIL FROM:<s@x> SIZE=500\r\n"


def test_mail_over_only_the_upstream_size_is_left_to_the_upstream() -> None:
    d = limited(5000)  # upstream SIZE 1000
    d.command("MAIL FROM:<s@x> SIZE=2000", Reply.single(552, "5.3.4 too big"))
    assert d.upstream[-1] == b"MAIL FROM:<s@x> SIZE=2000\r\n"


def test_message_over_max_message_size_gets_552_after_helo_too() -> None:
    d = Driver(SessionPolicy(client="c", max_message_size=100))
    d.greet()
    d.command("HELO c", Reply.single(250, "up.example"))  # no SIZE said, still enforced
    with_envelope(d)
    d.command("DATA")
    actions = d.session.handle(MessageReceived(101))
    assert actions[0] == SendClient(MESSAGE_TOO_BIG)
    assert isinstance(actions[2], Summary) and actions[2].outcome is Status.TOO_BIG


def test_spool_failure_gives_reply_and_rset() -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")
    reply = Reply.single(451, "Local Error")
    actions = d.session.handle(MessageFailed(reply, "disk full"))
    assert actions[:2] == [SendClient(reply), SendUpstream(b"RSET\r\n", Purpose.RSET)]
    assert isinstance(actions[2], Summary) and "FILTER-ERROR" in actions[2].text


def test_two_transactions_two_summaries_and_envelope_reset() -> None:
    d = ready()
    for sender in ("a@x", "b@x"):
        d.command(f"MAIL FROM:<{sender}>", OK)
        d.command("RCPT TO:<r@x>", OK)
        d.command("DATA")
        assert d.session.envelope.sender == sender
        d.run(d.session.handle(MessageReceived(3)), [])
        d.run(
            d.session.handle(FilterDone(True, None, Status.FILTERED)),
            [Reply.single(354, "go")],
        )
        # SendMessage was collected in `other`: answer it.
        d.run(d.session.handle(UpstreamReply(OK, exchange=SendMessage())), [])
    texts = [s.text for s in d.summaries()]
    assert len(texts) == 2 and "from=<a@x>" in texts[0] and "from=<b@x>" in texts[1]
    assert d.session.messages == 2


# -- reject and skip modes ------------------------------------------------------------------


REJECT = Reply.single(530, "Email Rejected")


def test_reject_mode_mail_rcpt_data_answered_locally() -> None:
    d = ready(SessionPolicy(client="127.0.0.1", filtering=False, reject=REJECT))
    assert d.command("MAIL FROM:<s@x>") == [REJECT]
    assert d.command("RCPT TO:<r@x>") == [REJECT]
    assert d.command("DATA", OK) == [REJECT]
    assert d.upstream == [b"EHLO c\r\n", b"RSET\r\n"]
    [summary] = d.summaries()
    assert summary.outcome is Status.REJECTED
    assert summary.text.startswith("client=127.0.0.1, status=REJECTED")


def test_skip_mode_streams_after_auth() -> None:
    policy = SessionPolicy(client="c", reject=REJECT, skip_authenticated=True)
    d = ready(policy)
    d.command("AUTH PLAIN AGFAYg==", Reply.single(235, "ok"))
    assert d.command("MAIL FROM:<s@x>", OK) == [OK]
    d.command("RCPT TO:<r@x>", OK)
    up354 = Reply.single(354, "upstream go ahead")
    before = len(d.client)
    d.run(d.session.handle(ClientCommand(parse_command(b"DATA\r\n"))), [up354])
    assert d.client[before:] == [up354]
    assert ReceiveMessage(stream=True) in d.other
    assert state_of(d.session) is State.DATA
    done = d.session.handle(UpstreamReply(OK, exchange=ReceiveMessage(stream=True)))
    [summary] = [a for a in done if isinstance(a, Summary)]
    assert summary.outcome is Status.SKIPPED and "status=SKIPPED" in summary.text
    assert state_of(d.session) is State.MAIL


def test_skip_mode_upstream_refuses_data() -> None:
    d = ready(SessionPolicy(client="c", skip_authenticated=True))
    d.command("AUTH PLAIN AGFAYg==", Reply.single(235, "ok"))
    refusal = Reply.single(554, "no recipients")
    assert d.command("DATA", refusal) == [refusal]
    assert state_of(d.session) is State.MAIL


def test_skip_mode_without_auth_filters() -> None:
    d = ready(SessionPolicy(client="c", skip_authenticated=True))
    with_envelope(d)
    assert d.command("DATA") == [START_MAIL_INPUT]


# -- XCLIENT ----------------------------------------------------------------------------------


XCLIENT_OK = Reply(220, ("up.example ESMTP", "more"))


def test_xclient_sent_before_next_command_then_ehlo_resent() -> None:
    d = ready(SessionPolicy(client="127.0.0.1", xclient=True))
    replies = d.command("MAIL FROM:<s@x>", XCLIENT_OK, EHLO_REPLY, OK)
    assert replies == [OK]  # the XCLIENT and EHLO replies are swallowed
    assert d.upstream == [
        b"EHLO c\r\n",
        b"XCLIENT ADDR=127.0.0.1 HELO=c\r\n",
        b"EHLO c\r\n",
        b"MAIL FROM:<s@x>\r\n",
    ]
    assert d.session.envelope.sender == "s@x"
    # Once per connection.
    d.command("RSET", OK)
    assert d.upstream[-1] == b"RSET\r\n" and d.upstream.count(d.upstream[1]) == 1


def test_xclient_ipv6_prefix_and_name_xtext() -> None:
    policy = SessionPolicy(
        client="2001:db8::1", client_is_ipv6=True, xclient=True, xclient_name="h=x"
    )
    d = ready(policy)
    d.command("NOOP", XCLIENT_OK, EHLO_REPLY, OK)
    # "h=x" is no host name: the next server would refuse it (issue 21, §4.5).
    assert d.upstream[1] == b"XCLIENT ADDR=IPv6:2001:db8::1 NAME=[UNAVAILABLE] HELO=c\r\n"


def test_xclient_unix_client_unavailable() -> None:
    d = ready(SessionPolicy(client="", xclient=True))
    d.command("NOOP", XCLIENT_OK, EHLO_REPLY, OK)
    assert d.upstream[1].startswith(b"XCLIENT ADDR=[UNAVAILABLE]")


def test_xclient_not_before_quit() -> None:
    d = ready(SessionPolicy(client="c", xclient=True))
    d.command("QUIT", Reply.single(221, "Bye"))
    assert d.upstream == [b"EHLO c\r\n", b"QUIT\r\n"]


def test_xclient_not_sent_when_not_advertised_after_ehlo() -> None:
    d = ready(SessionPolicy(client="c", xclient=True), ehlo=EHLO_NO_XCLIENT)
    d.command("NOOP", OK)
    assert d.upstream == [b"EHLO c\r\n", b"NOOP\r\n"]


def test_xclient_assumed_after_helo() -> None:
    d = Driver(SessionPolicy(client="127.0.0.1", xclient=True))
    d.greet()
    d.command("HELO c", Reply.single(250, "up"))
    d.command("MAIL FROM:<s@x>", XCLIENT_OK, Reply.single(250, "up"), OK)
    assert d.upstream[1:3] == [b"XCLIENT ADDR=127.0.0.1 HELO=c\r\n", b"HELO c\r\n"]


def test_xclient_off_sends_nothing() -> None:
    d = ready(SessionPolicy(client="c"))
    d.command("NOOP", OK)
    assert not any(line.startswith(b"XCLIENT") for line in d.upstream)


def test_xclient_advertised_and_refused_fails_closed() -> None:
    # Issue 21: going on would relay the client's mail as the proxy's own (§4.5).
    d = ready(SessionPolicy(client="c", xclient=True))
    actions = d.session.handle(ClientCommand(parse_command(b"NOOP\r\n")))
    [xclient] = actions
    assert isinstance(xclient, SendUpstream) and xclient.purpose is Purpose.XCLIENT
    after = d.session.handle(UpstreamReply(Reply.single(550, "denied"), exchange=xclient))
    assert after[1:] == [SendClient(XCLIENT_REFUSED), Close()]
    assert isinstance(after[0], Log) and "refused XCLIENT: 550 denied" in after[0].message
    assert d.session.pending == ()  # the NOOP never went upstream


def test_xclient_assumed_after_helo_and_refused_is_logged_and_no_helo_resent() -> None:
    d = Driver(SessionPolicy(client="c", xclient=True))
    d.greet()
    d.command("HELO c", Reply.single(250, "up"))
    d.command("NOOP", Reply.single(502, "unknown"), OK)
    assert d.upstream[-1] == b"NOOP\r\n" and len(d.upstream) == 3
    assert any("didn't accept XCLIENT" in log.message for log in d.logs())


@pytest.mark.parametrize(
    ("name", "sent"),
    [
        ("mx1.example.org", b"NAME=mx1.example.org"),
        ("[TEMPUNAVAIL]", b"NAME=[TEMPUNAVAIL]"),
        ("a" * 64 + ".example", b"NAME=[UNAVAILABLE]"),  # a label over 63
        ("x." * 130 + "org", b"NAME=[UNAVAILABLE]"),  # over 255
        ("1.2.3.4", b"NAME=[UNAVAILABLE]"),  # all digits
        ("-x.example", b"NAME=[UNAVAILABLE]"),
    ],
)
def test_xclient_name_only_when_the_next_server_can_take_it(name: str, sent: bytes) -> None:
    d = ready(SessionPolicy(client="127.0.0.1", xclient=True, xclient_name=name))
    d.command("NOOP", XCLIENT_OK, EHLO_REPLY, OK)
    assert d.upstream[1] == b"XCLIENT ADDR=127.0.0.1 " + sent + b" HELO=c\r\n"


@pytest.mark.parametrize(
    ("helo", "sent"),
    [
        ("h" * 255, b"HELO=" + b"h" * 255),
        ("h" * 256, b"HELO=[UNAVAILABLE]"),
        ("a+b", b"HELO=a+2Bb"),
        ("\u00e9" * 100, b"HELO=[UNAVAILABLE]"),  # 200 bytes, but 600 encoded: past 512
    ],
)
def test_xclient_helo_within_255_bytes_and_the_line_within_512(helo: str, sent: bytes) -> None:
    name = ".".join(["n" * 49] * 3)  # a long NAME= (149 bytes) beside it
    d = Driver(SessionPolicy(client="127.0.0.1", xclient=True, xclient_name=name))
    d.greet()
    d.command(f"EHLO {helo}", EHLO_REPLY)
    d.command("NOOP", XCLIENT_OK, EHLO_REPLY, OK)
    line = d.upstream[1]
    assert line.endswith(b" " + sent + b"\r\n") and len(line) <= 512


def test_xclient_exchange_completes_before_the_command_is_dispatched() -> None:
    d = ready(SessionPolicy(client="c", xclient=True))
    actions = d.session.handle(ClientCommand(parse_command(b"STARTTLS\r\n")))
    # Only the XCLIENT goes out first: the local 502 waits for the exchange to finish.
    [xclient] = actions
    assert isinstance(xclient, SendUpstream) and xclient.purpose is Purpose.XCLIENT
    follow = d.session.handle(UpstreamReply(XCLIENT_OK, exchange=xclient))
    assert [type(a) for a in follow] == [SendUpstream]
    assert d.session.handle(UpstreamReply(EHLO_REPLY, exchange=follow[0])) == [
        SendClient(NOT_IMPLEMENTED)
    ]


def test_xclient_then_refused_ehlo_still_dispatches() -> None:
    d = ready(SessionPolicy(client="c", xclient=True))
    assert d.command("NOOP", XCLIENT_OK, Reply.single(503, "no"), OK) == [OK]
    assert any("after XCLIENT" in log.message for log in d.logs())


# -- a connection ending in the middle of a message -------------------------------------


@pytest.mark.parametrize("stage", ["data", "filtering", "replay"])
def test_abort_mid_message_gives_its_one_summary(stage: str) -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")
    if stage in ("filtering", "replay"):
        d.run(d.session.handle(MessageReceived(10)), [])
    if stage == "replay":
        d.run(d.session.handle(FilterDone(True, None, Status.FILTERED)), [Reply.single(354, "go")])
    assert state_of(d.session).value == stage
    [summary] = d.session.handle(ConnectionEnded("client disconnected"))
    assert isinstance(summary, Summary)
    assert summary.outcome is Status.FILTER_ERROR
    assert summary.text.startswith(
        "client=192.0.2.1, from=<s@x>, to=<r@x>, status=FILTER-ERROR, "
        "reason=client disconnected, relay=none, "
    )
    assert ("size=10" in summary.text) is (stage != "data")
    assert d.session.handle(ConnectionEnded("again")) == []  # one summary per message


@pytest.mark.parametrize(
    ("stage", "delays"),
    [
        ("data", "delay=3.00, delays=3.00/0.00/0.00"),
        ("filtering", "delay=3.00, delays=0.50/2.50/0.00"),
        ("replay", "delay=3.00, delays=0.50/1.00/1.50"),
    ],
)
def test_a_message_cut_short_gets_the_time_it_ran_in_its_stage(stage: str, delays: str) -> None:
    # Issue 21 case 9: the stage under way gets what the finished ones do not account for.
    d = ready()
    with_envelope(d)
    d.command("DATA")
    if stage in ("filtering", "replay"):
        d.run(d.session.handle(MessageReceived(10, seconds=0.5)), [])
    if stage == "replay":
        done = FilterDone(True, None, Status.FILTERED, seconds=1.0)
        d.run(d.session.handle(done), [Reply.single(354, "go")])
    [summary] = d.session.handle(ConnectionEnded("client disconnected", seconds=3.0))
    assert isinstance(summary, Summary)
    assert summary.text.endswith(delays)


def test_abort_between_messages_logs_nothing() -> None:
    d = ready()
    with_envelope(d)
    assert d.session.handle(ConnectionEnded("client disconnected")) == []


# -- the queue of pending exchanges and the sticky error ----------------------------------


def test_replies_answer_the_pending_exchanges_in_order() -> None:
    d = ready()
    (mail,) = d.session.handle(ClientCommand(parse_command(b"MAIL FROM:<s@x>\r\n")))
    assert d.session.pending == (mail,)
    assert d.session.handle(UpstreamReply(OK)) == [SendClient(OK)]
    assert d.session.pending == ()
    with pytest.raises(LocalProtocolError):
        d.session.handle(UpstreamReply(OK))


def test_an_illegal_input_breaks_the_session_for_good() -> None:
    d = ready()
    with pytest.raises(LocalProtocolError):
        d.session.handle(MessageReceived(1))
    # Legal on its own, but the session can no longer be trusted.
    with pytest.raises(LocalProtocolError, match="already failed"):
        d.session.handle(ClientCommand(parse_command(b"NOOP\r\n")))


def test_a_reply_to_another_action_than_the_oldest_pending_is_our_bug() -> None:
    d = ready()
    d.session.handle(ClientCommand(parse_command(b"MAIL FROM:<s@x>\r\n")))
    with pytest.raises(LocalProtocolError):
        d.session.handle(UpstreamReply(OK, exchange=SendUpstream(b"RSET\r\n", Purpose.RSET)))


# -- the summary line -------------------------------------------------------------------


def filtering(d: Driver) -> Driver:
    with_envelope(d)
    d.command("DATA")
    d.session.handle(MessageReceived(10, seconds=0.25))
    return d


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (Reply.single(451, "4.7.1 Try again later"), Status.DEFERRED),
        (Reply.single(550, "5.7.1 Spam"), Status.REJECTED),
        (Reply.single(554, "Content Rejected; Virus"), Status.REJECTED),
    ],
)
def test_filter_refusal_status_follows_the_reply_code(reply: Reply, status: Status) -> None:
    """A 4xx is retried by the client (DEFERRED), a 5xx bounces (REJECTED)."""
    d = filtering(ready())
    actions = d.session.handle(FilterDone(False, reply, Status.REJECTED, "exit 1", seconds=0.5))
    [summary] = [a for a in actions if isinstance(a, Summary)]
    assert summary.outcome is status
    assert f"status={status.value}, reason={reply.text}, relay=none, size=10" in summary.text
    assert summary.text.endswith("delay=0.75, delays=0.25/0.50/0.00")


def test_reject_mode_temporary_filter_reject_is_deferred() -> None:
    tempfail = Reply.single(451, "4.3.0 Closed for maintenance")
    d = ready(SessionPolicy(client="c", filtering=False, reject=tempfail))
    d.command("MAIL FROM:<s@x>")
    assert d.command("DATA", OK) == [tempfail]
    [summary] = d.summaries()
    assert summary.outcome is Status.DEFERRED
    assert summary.text == (
        "client=c, status=DEFERRED, reason=451 4.3.0 Closed for maintenance, relay=none, "
        "delay=0.00, delays=0.00/0.00/0.00"
    )


def test_null_sender_and_raw_addresses_in_brackets() -> None:
    d = ready(SessionPolicy(client="c", filtering=False))
    d.command("MAIL FROM:<>", OK)
    d.command("RCPT TO: odd", OK)
    d.command("DATA")
    [data] = d.session.handle(MessageReceived(3))
    [message] = d.session.handle(UpstreamReply(Reply.single(354, "go"), exchange=data))
    d.run(d.session.handle(UpstreamReply(OK, exchange=message)), [])
    [summary] = d.summaries()
    assert summary.text.startswith("client=c, from=<>, to=<odd>, status=PASSED, ")


def test_upstream_refusing_our_data_is_logged_with_its_relay_and_time() -> None:
    d = filtering(ready())
    [data] = d.session.handle(FilterDone(True, None, Status.FILTERED, seconds=1.0))
    actions = d.session.handle(
        UpstreamReply(Reply.single(451, "4.3.0 busy"), seconds=0.5, exchange=data)
    )
    [summary] = [a for a in actions if isinstance(a, Summary)]
    # The status says what the proxy did; upstream= says what the next server answered.
    assert summary.outcome is Status.FILTERED and summary.upstream_code == 451
    assert summary.text.endswith(
        f"upstream=451 4.3.0 busy, relay={RELAY}, size=10, delay=1.75, delays=0.25/1.00/0.50"
    )


def test_skip_mode_summary_has_size_and_delays() -> None:
    d = ready(SessionPolicy(client="c", skip_authenticated=True))
    d.command("AUTH PLAIN AGFAYg==", Reply.single(235, "ok"))
    d.command("MAIL FROM:<s@x>", OK)
    d.command("RCPT TO:<r@x>", OK)
    d.command("DATA", Reply.single(354, "go"))
    assert d.session.handle(MessageStreamed(42, seconds=2.0)) == []
    done = d.session.handle(UpstreamReply(OK, seconds=0.5))
    [summary] = [a for a in done if isinstance(a, Summary)]
    assert summary.outcome is Status.SKIPPED
    assert summary.text.endswith(f"relay={RELAY}, size=42, delay=2.50, delays=2.00/0.00/0.50")


def test_message_streamed_without_a_stream_is_our_bug() -> None:
    d = ready()
    with_envelope(d)
    d.command("DATA")  # spooled, not streamed
    with pytest.raises(LocalProtocolError):
        d.session.handle(MessageStreamed(1))


def test_each_message_starts_with_fresh_facts() -> None:
    d = filtering(ready())
    d.run(
        d.session.handle(FilterDone(False, Reply.single(550, "no"), Status.REJECTED, seconds=3)),
        [OK],
    )
    d.command("MAIL FROM:<s@x>", OK)
    d.command("RCPT TO:<r@x>", OK)
    d.command("DATA")
    [summary] = d.session.handle(ConnectionEnded("client disconnected"))
    assert isinstance(summary, Summary)
    assert "size=" not in summary.text
    assert summary.text.endswith("delay=0.00, delays=0.00/0.00/0.00")
