"""fast_io.FastPath: the socket call tried first keeps SocketStream's results and errors,
yields after FAIR_EVERY fast calls, and leaves other streams to the normal path; a read
that answers what was just sent waits first."""

from __future__ import annotations

import logging
import os

import pytest
import trio
import trio.testing

from trio_proxsmtp.client_info import ClientInfo
from trio_proxsmtp.config import parse_config
from trio_proxsmtp.fast_io import FAIR_EVERY, FastPath
from trio_proxsmtp.upstream import Outgoing, Upstream

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


async def test_will_wait_makes_the_next_read_wait_without_trying_the_socket() -> None:
    left, right = stream_pair()
    fast = FastPath()
    await right.send_all(b"early")
    assert fast.will_wait(left)  # the caller skips `receive` and waits at once
    async with trio.open_nursery() as nursery:
        nursery.start_soon(right.send_all, b"+late")
        data = await fast.receive_waiting(left, 1024)
    assert data in (b"early", b"early+late")  # waited on the socket, then one read
    await left.aclose()
    await right.aclose()


async def test_will_wait_leaves_other_streams_to_the_normal_path() -> None:
    left, _right = trio.testing.memory_stream_pair()
    assert not FastPath().will_wait(left)


async def test_an_upstream_reply_is_waited_for_then_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Lock-step SMTP: the answer to what was just sent is not there yet, so no read is
    # tried before waiting (it would only fail with EAGAIN): one read, after the wait.
    ours, theirs = stream_pair()

    async def opener() -> tuple[trio.abc.Stream, str]:
        return ours, "127.0.0.1:25"

    log = logging.LoggerAdapter(logging.getLogger("test"), {})
    upstream = Upstream(parse_config("OutAddress: 127.0.0.1:25\n"), CLIENT, log, opener=opener)
    await upstream.connect()
    reads: list[int] = []
    real_read = os.read

    def counting_read(fd: int, size: int) -> bytes:
        reads.append(fd)
        return real_read(fd, size)

    async def answer() -> None:
        assert await theirs.receive_some(100) == b"NOOP\r\n"
        await theirs.send_all(b"250 ok\r\n")

    monkeypatch.setattr(os, "read", counting_read)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        reply = await upstream.command(Outgoing(b"NOOP\r\n"))
    assert reply.code == 250
    assert reads == [ours.socket.fileno()]
    await ours.aclose()
    await theirs.aclose()
