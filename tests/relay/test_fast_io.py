"""fast_io.FastPath: the socket call tried first keeps SocketStream's results and errors,
yields after FAIR_EVERY fast calls, and leaves other streams to the normal path."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_proxsmtp.fast_io import FAIR_EVERY, FastPath


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


async def test_wait_readable_waits_for_bytes() -> None:
    left, right = stream_pair()
    fast = FastPath()
    assert await fast.receive(left, 1024) is None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(right.send_all, b"late")
        await fast.wait_readable(left)
    assert await left.receive_some(1024) == b"late"
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
