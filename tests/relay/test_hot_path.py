"""Per-message work kept out of the hot path (issue 15): what is done once per connection,
or only when a log line is printed, and not for every message."""

from __future__ import annotations

import logging
import math
import os
import socket
from typing import Any

import pytest
import trio
import trio.testing

from trio_proxsmtp.protocol.message.summary import MessageSummary, Status
from trio_proxsmtp.protocol.session.actions import Summary
from trio_proxsmtp.relay.client_channel import ClientChannel
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.endings import MessageTimedOut
from trio_proxsmtp.relay.fast_io import FastPath
from trio_proxsmtp.relay.message_deadline import MessageDeadline

LOG = logging.LoggerAdapter(logging.getLogger("test.hot_path"), {})


async def test_the_departure_peek_builds_one_socket_object_per_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A socket object built around the descriptor costs a getsockname system call; the
    # peek before each final "." reuses one, detached (never closed) at the end.
    ours, theirs = trio.socket.socketpair()
    stream = trio.SocketStream(ours)
    info = ClientInfo(client="127.0.0.1", local="127.0.0.1", socket=ours)
    channel = ClientChannel(stream, info, 30.0, LOG)
    built: list[int] = []
    real_socket = socket.socket

    def counting_socket(*args: object, **kwargs: object) -> socket.socket:
        sock = real_socket(*args, **kwargs)  # type: ignore[arg-type]
        built.append(sock.fileno())
        return sock

    monkeypatch.setattr(socket, "socket", counting_socket)
    assert [channel.has_left() for _ in range(3)] == [False, False, False]
    theirs.close()
    assert channel.has_left()
    assert built == [ours.fileno()]
    await channel.aclose()  # detaches the peek socket: the stream closes the descriptor once
    assert ours.fileno() == -1


def test_a_summary_is_formatted_only_when_its_line_is_printed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    summary = Summary(MessageSummary(client="192.0.2.1", status=Status.PASSED, sender="s@x"))
    assert str(summary) == summary.text
    formatted: list[int] = []
    real_line = MessageSummary.line

    def counting_line(self: MessageSummary) -> str:
        formatted.append(1)
        return real_line(self)

    monkeypatch.setattr(MessageSummary, "line", counting_line)
    logger = logging.getLogger("test.hot_path.summary")
    logger.setLevel(logging.WARNING)
    logger.info("%s", summary)  # dropped at this level: never formatted
    assert formatted == []
    with caplog.at_level(logging.INFO, logger="test.hot_path.summary"):
        logger.info("%s", summary)
    assert formatted  # printed: formatted (once per handler)
    assert caplog.records[-1].getMessage() == real_line(summary.message)


async def test_a_command_there_after_one_yield_is_read_without_a_cancel_scope(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The drain scope and the read's deadline scope are for a wait; the next command
    # nearly always arrives while the other sessions have their turn, and needs neither.
    ours, theirs = trio.socket.socketpair()
    info = ClientInfo(client="127.0.0.1", local="127.0.0.1", socket=ours)
    channel = ClientChannel(trio.SocketStream(ours), info, 30.0, LOG)
    scopes: list[int] = []
    real_scope = trio.CancelScope

    def counting_scope(*args: Any, **kwargs: Any) -> trio.CancelScope:
        scopes.append(1)
        return real_scope(*args, **kwargs)

    monkeypatch.setattr(trio, "CancelScope", counting_scope)
    os.write(theirs.fileno(), b"NOOP\r\n")
    assert await channel.next_command() == b"NOOP\r\n"
    assert scopes == []

    async def write_once_waiting() -> None:
        await trio.testing.wait_all_tasks_blocked()
        os.write(theirs.fileno(), b"QUIT\r\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_once_waiting)
        assert await channel.next_command() == b"QUIT\r\n"
    assert len(scopes) == 2  # nothing came in time: the drain scope and the deadline's
    await channel.aclose()
    theirs.close()


async def test_message_timeout_moves_the_connection_scope_and_enters_no_scope_per_stage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two stages a message at least (our DATA, the replay): a cancel scope each cost more
    # than the rest of the deadline's work; the connection's scope carries the deadline.
    connection_scope = trio.CancelScope()
    deadline = MessageDeadline(40.0)
    deadline.bind(connection_scope)
    scopes: list[int] = []
    real_scope = trio.CancelScope

    def counting_scope(*args: Any, **kwargs: Any) -> trio.CancelScope:
        scopes.append(1)
        return real_scope(*args, **kwargs)

    monkeypatch.setattr(trio, "CancelScope", counting_scope)
    now = trio.current_time()
    deadline.start(now)
    assert connection_scope.deadline == now + 40.0
    for stage in ("the next server's reply", "the replay"):
        with deadline.stage(stage):
            await trio.lowlevel.checkpoint()
    assert deadline.expired() is None  # not past it
    deadline.lift()
    assert connection_scope.deadline == math.inf
    assert scopes == []
    deadline.start(now - 50.0)  # a deadline that has passed: the connection's error
    timed_out = deadline.expired()
    assert isinstance(timed_out, MessageTimedOut)
    assert str(timed_out) == "the replay not done 40 s after the final '.'"
    deadline.at = math.inf  # the message's end (Transaction.close) raced with it:
    assert connection_scope.deadline == math.inf
    assert connection_scope.cancel_called  # the scope was cancelled by the deadline,
    assert isinstance(deadline.expired(), MessageTimedOut)  # and the connection says so
    deadline.start(trio.current_time())  # the next message starts afresh
    assert deadline.expired() is None


async def test_the_fast_path_asks_trio_for_the_descriptor_once_per_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # trio's SocketType.fileno is a Python method: two calls a read or write otherwise.
    ours, theirs = trio.socket.socketpair()
    stream = trio.SocketStream(ours)
    asked: list[int] = []
    real_fileno = type(ours).fileno

    def counting_fileno(self: trio.socket.SocketType) -> int:
        asked.append(1)
        return real_fileno(self)

    monkeypatch.setattr(type(ours), "fileno", counting_fileno)
    fast = FastPath()
    for _ in range(3):
        assert await fast.send(stream, b"ping") == 4
        assert await fast.receive(trio.SocketStream(theirs), 64) == b"ping"
    assert asked == []
    ours.close()
    assert await fast.send(stream, b"ping") == 0  # closed: the normal path says so
