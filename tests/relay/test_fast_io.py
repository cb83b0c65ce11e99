"""fast_io.FastPath: the socket call tried first keeps SocketStream's results and errors,
yields after FAIR_EVERY fast calls, and leaves other streams to the normal path; a read
that answers what was just sent waits first."""

from __future__ import annotations

import logging
import os

import pytest
import trio
import trio.testing

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.settings import upstream_settings
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.fast_io import FAIR_EVERY, FastPath
from trio_proxsmtp.relay.upstream import Outgoing, Upstream

CLIENT = ClientInfo(client="127.0.0.1", local="127.0.0.1")


def stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_bytes_waiting_are_read_and_an_empty_socket_takes_the_normal_path() -> None:
    left, right = stream_pair()
    fast = FastPath()
    assert await fast.receive(left, 1024) is None  # would block: wait the normal way
    await right.send_all(b"hello")
    assert await fast.receive(left, 1024) == b"hello"
    await right.aclose()
    assert await fast.receive(left, 1024) == b""  # end of file, as receive_some says
    await left.aclose()


async def test_receive_waiting_waits_for_bytes_and_reads_them_in_one_call() -> None:
    left, right = stream_pair()
    fast = FastPath()
    assert await fast.receive(left, 1024) is None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(right.send_all, b"late")
        assert await fast.receive_waiting(left, 1024) == b"late"
    await right.aclose()
    assert await fast.receive(left, 1024) == b""  # end of file
    await left.aclose()


async def test_receive_waiting_sees_end_of_file_and_a_closed_socket() -> None:
    left, right = stream_pair()
    fast = FastPath()
    assert await fast.receive(left, 1024) is None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(right.aclose)
        assert await fast.receive_waiting(left, 1024) == b""
    await left.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await fast.receive_waiting(left, 1024)  # not blocked: the stream's own read says so


async def test_receive_waiting_without_a_blocked_read_is_the_stream_read() -> None:
    left, right = stream_pair()
    fast = FastPath()
    await right.send_all(b"ready")
    with trio.testing.assert_checkpoints():
        assert await fast.receive_waiting(left, 1024) == b"ready"
    await left.aclose()
    await right.aclose()


async def test_send_writes_at_once_and_errors_are_those_of_socket_stream() -> None:
    left, right = stream_pair()
    fast = FastPath()
    assert await fast.send(left, b"ping") == 4
    assert await right.receive_some(1024) == b"ping"
    await right.aclose()  # the peer is gone: EPIPE
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(FAIR_EVERY):
            await fast.send(left, b"x")
    await left.aclose()
    assert await fast.send(left, b"x") == 0  # closed: the normal path raises ClosedResourceError
    assert await fast.receive(left, 10) is None


async def test_every_fair_every_th_call_takes_the_normal_path() -> None:
    left, right = stream_pair()
    fast = FastPath()
    results = [await fast.send(left, b"x") for _ in range(FAIR_EVERY)]
    assert results == [1] * (FAIR_EVERY - 1) + [0]
    await left.aclose()
    await right.aclose()


async def test_a_cancelled_scope_is_seen_before_the_fast_call() -> None:
    left, right = stream_pair()
    await right.send_all(b"waiting")
    fast = FastPath()
    with trio.CancelScope() as scope:
        scope.cancel()
        await fast.receive(left, 1024)
    assert scope.cancelled_caught
    assert await fast.receive(left, 1024) == b"waiting"  # not consumed by the cancelled call
    await left.aclose()
    await right.aclose()


async def test_other_streams_take_the_normal_path() -> None:
    one, _ = trio.testing.memory_stream_pair()
    fast = FastPath()
    assert await fast.receive(one, 10) is None
    assert await fast.send(one, b"x") == 0


async def test_a_later_read_yields_to_the_other_tasks_before_the_system_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `later`: the answer to what was just sent; the other tasks get their turn first
    # (a full checkpoint), then the read is tried; nothing there yet: the caller waits.
    left, right = stream_pair()
    events: list[str] = []
    real_checkpoint, real_read = trio.lowlevel.checkpoint, os.read

    async def recording_checkpoint() -> None:
        events.append("yield")
        await real_checkpoint()

    def recording_read(fd: int, size: int) -> bytes:
        events.append("read")
        return real_read(fd, size)

    monkeypatch.setattr(trio.lowlevel, "checkpoint", recording_checkpoint)
    monkeypatch.setattr(os, "read", recording_read)
    fast = FastPath()
    await right.send_all(b"answer")
    assert await fast.receive(left, 1024, later=True) == b"answer"
    assert await fast.receive(left, 1024, later=True) is None  # nothing came: wait then
    assert await fast.receive(left, 1024) is None  # not later: no yield
    assert events == ["yield", "read", "yield", "read", "read"]
    await left.aclose()
    await right.aclose()


async def test_an_upstream_reply_is_read_after_a_yield_and_without_a_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Lock-step SMTP: the answer to what was just sent is not there at once, but usually
    # is once the other sessions have had their turn: yield, then read.  Waiting at once
    # would cost an epoll registration and a wake-up for nearly every reply.
    ours, theirs = stream_pair()

    async def opener() -> tuple[trio.abc.Stream, str]:
        return ours, "127.0.0.1:25"

    log = logging.LoggerAdapter(logging.getLogger("test"), {})
    settings = upstream_settings(parse_config("OutAddress: 127.0.0.1:25\n"))
    upstream = Upstream(settings, CLIENT, log, opener=opener)
    await upstream.connect()
    events: list[str] = []
    real_checkpoint, real_read, real_write = trio.lowlevel.checkpoint, os.read, os.write
    real_wait = trio.lowlevel.wait_readable

    async def recording_checkpoint() -> None:
        events.append("yield")
        await real_checkpoint()
        if events.count("yield") == 1:  # another session answers meanwhile
            real_write(theirs.socket.fileno(), b"250 ok\r\n")

    def recording_read(fd: int, size: int) -> bytes:
        events.append("read")
        return real_read(fd, size)

    def recording_write(fd: int, data: bytes) -> int:
        events.append("send")
        return real_write(fd, data)

    async def recording_wait(sock: trio.socket.SocketType) -> None:
        events.append("wait")
        await real_wait(sock)

    monkeypatch.setattr(trio.lowlevel, "checkpoint", recording_checkpoint)
    monkeypatch.setattr(trio.lowlevel, "wait_readable", recording_wait)
    monkeypatch.setattr(os, "read", recording_read)
    monkeypatch.setattr(os, "write", recording_write)
    reply = await upstream.command(Outgoing(b"NOOP\r\n"))
    assert reply.code == 250
    assert events == ["send", "yield", "read"]
    await ours.aclose()
    await theirs.aclose()
