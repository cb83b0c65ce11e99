"""The client's bytes framed by the session's actions: the result never depends on how
the bytes were split, which is what keeps smuggling, STARTTLS injection and BDAT chunks
out of the command stream."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.session.actions import (
    Action,
    Close,
    ReceiveMessage,
    SendClient,
    SendMessage,
    SendUpstream,
    SkipBytes,
    StartTLS,
)
from trio_proxsmtp.protocol.session.events import (
    ClientCommand,
    ClientTLSStarted,
    CommandTooLong,
    Greeting,
    MessageReceived,
    UpstreamReply,
)
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.smtp.commands import parse_command
from trio_proxsmtp.protocol.smtp.lines import LineTooLong
from trio_proxsmtp.protocol.smtp.reader import (
    Body,
    ClientReader,
    Line,
    Mode,
    NeedData,
    Skipped,
    TlsBoundary,
)
from trio_proxsmtp.protocol.smtp.replies import Reply

PLAIN = (
    b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n"
    b"Subject: s\r\n\r\nbody\r\n..dot\r\nMAIL FROM:<smuggled@x>\r\nRCPT TO:<smuggled@x>\r\n"
    b".\r\n"
    b"BDAT 23\r\nMAIL FROM:<skipped@x>\r\n"  # the 23 bytes of the chunk are never commands
    b"NOOP\r\n" + b"X" * 5000 + b"\r\nSTARTTLS\r\nMAIL FROM:<injected@x>\r\n"
)
TLS = b"EHLO again\r\nQUIT\r\n"
OK = Reply.single(250, "ok")


def upstream_reply(line: bytes) -> Reply:
    if line.startswith(b"EHLO"):
        return Reply(250, ("up", "SIZE 100000"))
    if line == b"DATA\r\n":
        return Reply.single(354, "go")
    return OK


class Model:
    """Plays the relay with a ClientReader: records what would go where."""

    def __init__(self) -> None:
        self.session = Session(SessionPolicy(client="c", filtering=False, starttls=True))
        self.reader = ClientReader()
        self.seen: list[tuple[str, bytes]] = []
        self.body = b""
        self.tls = self.closed = False
        self.perform(self.session.handle(Greeting(Reply.single(220, "up"))))

    def perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendClient):
                self.seen.append(("client", action.reply.to_bytes()))
            elif isinstance(action, SendUpstream):
                self.seen.append(("upstream", action.line))
                self.perform(self.session.handle(UpstreamReply(upstream_reply(action.line))))
            elif isinstance(action, SendMessage):
                self.seen.append(("message", self.body))
                self.perform(self.session.handle(UpstreamReply(OK)))
            elif isinstance(action, ReceiveMessage | SkipBytes):
                self.body = b""
                assert self.reader.follow(action) is None
            elif isinstance(action, StartTLS):
                assert isinstance(self.reader.follow(action), TlsBoundary)
                self.seen.append(("tls", b""))
                self.session.handle(ClientTLSStarted())
                self.tls = True
            elif isinstance(action, Close):
                self.closed = True

    def pump(self) -> None:
        while not self.closed:
            event = self.reader.next_event()
            if isinstance(event, NeedData):
                return
            if isinstance(event, Line):
                self.perform(self.session.handle(ClientCommand(parse_command(event.data))))
            elif isinstance(event, LineTooLong):
                self.perform(self.session.handle(CommandTooLong()))
            elif isinstance(event, Body):
                self.body += event.data
                if event.done:
                    self.perform(self.session.handle(MessageReceived(len(self.body))))
            elif isinstance(event, Skipped):
                self.seen.append(("skipped", str(event.count).encode()))
            if self.tls and self.reader.buffered_size == 0:
                return


def run(plain: list[bytes], tls: list[bytes]) -> list[tuple[str, bytes]]:
    model = Model()
    for chunk in plain:
        if model.tls:
            break  # the rest is read by the TLS handshake, never as commands
        model.reader.feed(chunk)
        model.pump()
    assert model.tls
    for chunk in tls:
        model.reader.feed(chunk)
        model.pump()
    assert model.closed
    return model.seen


def split(data: bytes, cuts: set[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


EXPECTED = run([PLAIN], [TLS])


def test_expected_framing() -> None:
    upstream = [data for where, data in EXPECTED if where == "upstream"]
    assert upstream == [
        b"EHLO c\r\n",
        b"MAIL FROM:<a@x>\r\n",
        b"RCPT TO:<b@x>\r\n",
        b"DATA\r\n",
        b"NOOP\r\n",
        b"EHLO again\r\n",
        b"QUIT\r\n",
    ]
    messages = [data for where, data in EXPECTED if where == "message"]
    assert messages == [
        b"Subject: s\r\n\r\nbody\r\n.dot\r\nMAIL FROM:<smuggled@x>\r\nRCPT TO:<smuggled@x>\r\n"
    ]
    assert ("skipped", b"23") in EXPECTED
    assert ("client", b"500 5.5.2 Line too long\r\n") in EXPECTED
    assert ("tls", b"") in EXPECTED


def test_every_single_split_offset() -> None:
    for offset in range(len(PLAIN) + 1):
        assert run(split(PLAIN, {offset}), [TLS]) == EXPECTED, offset


@given(
    st.sets(st.integers(0, len(PLAIN))),
    st.sets(st.integers(0, len(TLS))),
)
def test_any_split_gives_the_same_framing(plain_cuts: set[int], tls_cuts: set[int]) -> None:
    assert run(split(PLAIN, plain_cuts), split(TLS, tls_cuts)) == EXPECTED


def test_modes_change_only_from_command_mode() -> None:
    reader = ClientReader()
    reader.begin_message()
    assert reader.mode is Mode.MESSAGE
    with pytest.raises(LocalProtocolError):
        reader.begin_skip(3)


def test_an_empty_skip_is_over_at_once_and_keeps_the_next_command() -> None:
    reader = ClientReader()
    reader.feed(b"NOOP\r\n")
    reader.begin_skip(0)
    assert reader.next_event() == Skipped(0)
    assert reader.next_event() == Line(b"NOOP\r\n")
