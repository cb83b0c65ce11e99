"""The client side's per-message calls and the DATA path of a large message (issue 26):
byte counts only when metrics are on, TimeOut without a call, no second dot search in the
replay of the client's own DATA."""

from __future__ import annotations

import logging
import os

import pytest
import trio

from trio_proxsmtp.common.metrics import Metrics
from trio_proxsmtp.protocol.smtp.data import DataSender
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.relay.client_channel import ClientChannel
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.deadlines import ClientDeadlines
from trio_proxsmtp.relay.transaction import JOIN_LIMIT
from trio_proxsmtp.relay.upstream import Outgoing, Upstream
from trio_proxsmtp.testing import FakeUpstream, run_proxy

LOG = logging.LoggerAdapter(logging.getLogger("test.large_message_path"), {})


class CountingMetrics(Metrics):
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.calls: list[tuple[str, str, int]] = []

    def bytes_received(self, peer: str, count: int) -> None:
        self.calls.append(("in", peer, count))

    def bytes_sent(self, peer: str, count: int) -> None:
        self.calls.append(("out", peer, count))


@pytest.mark.parametrize("enabled", [False, True])
async def test_the_client_side_counts_bytes_only_when_metrics_are_on(enabled: bool) -> None:
    ours, theirs = trio.socket.socketpair()
    info = ClientInfo(client="127.0.0.1", local="127.0.0.1", socket=ours)
    channel = ClientChannel(trio.SocketStream(ours), info, 30.0, LOG)
    metrics = CountingMetrics(enabled)
    channel.metrics = metrics
    os.write(theirs.fileno(), b"NOOP\r\n")
    assert await channel.next_command() == b"NOOP\r\n"
    await channel.send(Reply(250, ["OK"]))
    assert os.read(theirs.fileno(), 100) == b"250 OK\r\n"
    expected = [("in", "client", 6), ("out", "client", 8)] if enabled else []
    assert metrics.calls == expected
    await channel.aclose()
    theirs.close()


async def test_the_client_side_asks_for_timeout_without_a_call_when_no_stress(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = trio.socket.socketpair()
    info = ClientInfo(client="127.0.0.1", local="127.0.0.1", socket=ours)
    deadlines = ClientDeadlines(30.0)
    channel = ClientChannel(trio.SocketStream(ours), info, 30.0, LOG, deadlines)
    asked: list[int] = []
    real_idle = ClientDeadlines.idle

    def counting_idle(self: ClientDeadlines) -> float:
        asked.append(1)
        return real_idle(self)

    monkeypatch.setattr(ClientDeadlines, "idle", counting_idle)
    for command in (b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n", b"DATA\r\n"):
        os.write(theirs.fileno(), command)
        assert await channel.next_command() == command
    assert asked == []
    deadlines.stress.on = True  # under stress the shorter limit is asked for
    os.write(theirs.fileno(), b"QUIT\r\n")
    assert await channel.next_command() == b"QUIT\r\n"
    assert asked
    await channel.aclose()
    theirs.close()


async def test_the_replay_searches_for_dot_lines_only_when_the_client_sent_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The relay tells the sender whether the client sent a dot line; with dot_lines=False
    # the sender does not search (tests/protocol/test_protocol_data_dot_lines.py).  Observed
    # at the constructor, which the relay calls: a compiled core (tools/compile.py) calls
    # DataSender's own methods directly, past any patch of them.
    built: list[tuple[bool, bool]] = []
    real_init = DataSender.__init__

    def recording_init(sender: DataSender, *, clean: bool = False, dot_lines: bool = True) -> None:
        built.append((clean, dot_lines))
        real_init(sender, clean=clean, dot_lines=dot_lines)

    monkeypatch.setattr(DataSender, "__init__", recording_init)
    plain = b"Subject: a\r\n\r\n" + b"no dot. at a line start\r\n" * 20000  # spooled to a file
    dotted = b"Subject: b\r\n\r\n.a dot line\r\n..two\r\nend\r\n"
    with trio.fail_after(20):
        async with FakeUpstream() as up, run_proxy("", upstream=up) as proxy:
            async with proxy.connect() as client:
                replies = await client.send_message("s@x", ["r@x"], plain)
                assert replies[-1].code == 250
                assert built == [(True, False)]
                replies = await client.send_message("s@x", ["r@x"], dotted)
                assert replies[-1].code == 250
                assert built == [(True, False), (True, True)]
            assert proxy.leftovers() == []
    assert [t.message for t in up.transactions] == [plain, dotted]
    assert up.transactions[1].data == b"Subject: b\r\n\r\n..a dot line\r\n...two\r\nend\r\n"


async def test_a_large_last_chunk_goes_before_the_final_dot_not_joined_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands: list[bytes] = []
    real_command = Upstream.command

    async def recording_command(upstream: Upstream, item: Outgoing) -> Reply:
        commands.append(item.data)
        return await real_command(upstream, item)

    monkeypatch.setattr(Upstream, "command", recording_command)
    message = b"Subject: a\r\n\r\n" + (b"x" * 68 + b"\r\n") * 10000  # 700 KB: 3 spool chunks
    with trio.fail_after(20):
        async with FakeUpstream() as up, run_proxy("", upstream=up) as proxy:
            async with proxy.connect() as client:
                replies = await client.send_message("s@x", ["r@x"], message)
                assert replies[-1].code == 250
            assert proxy.leftovers() == []
    assert up.transactions[0].message == message
    final = [data for data in commands if data.endswith(b".\r\n")]  # the commit
    assert len(final) == 1 and len(final[0]) <= JOIN_LIMIT


async def test_the_replay_with_a_header_skips_the_line_end_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The Header option's line is CRLF-clean and goes at a line start: the client's own
    # DATA with it stays clean, so its replay skips the line-end check (a third of a large
    # message's CPU); a header line that starts with a dot is still stuffed.
    built: list[bool] = []
    real_init = DataSender.__init__

    def recording_init(sender: DataSender, *, clean: bool = False, dot_lines: bool = True) -> None:
        built.append(clean)
        real_init(sender, clean=clean, dot_lines=dot_lines)

    monkeypatch.setattr(DataSender, "__init__", recording_init)
    message = b"Subject: a\r\n\r\nbody\r\n"
    with trio.fail_after(20):
        async with (
            FakeUpstream() as up,
            run_proxy("Header: X-Checked: yes", upstream=up) as proxy,
            proxy.connect() as client,
        ):
            replies = await client.send_message("s@x", ["r@x"], message)
            assert replies[-1].code == 250
    assert built == [True]
    assert up.transactions[0].message == b"Subject: a\r\nX-Checked: yes\r\n\r\nbody\r\n"
