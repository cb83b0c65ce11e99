"""The client side's per-message calls and the DATA path of a large message (issue 26):
byte counts only when metrics are on, TimeOut without a call, no second dot search in the
replay of the client's own DATA."""

from __future__ import annotations

import logging
import os

import pytest
import trio

from trio_proxsmtp.common.metrics import Metrics
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.relay.client_channel import ClientChannel
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.deadlines import ClientDeadlines

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
