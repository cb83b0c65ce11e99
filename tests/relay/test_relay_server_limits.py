"""The server's resource handling: accept survives EMFILE, the fd limit fits MaxConnections."""

from __future__ import annotations

import errno
import resource
import select
import socket
import time

import attrs
import pytest
import trio
import trio.testing

from trio_proxsmtp.common.address import Address, AddressKind
from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.daemon.listeners import FDS_PER_CONNECTION, bind_listeners, raise_fd_limit
from trio_proxsmtp.daemon.server import Server


class _FlakyListener:
    """Fails accept() with EMFILE/ENFILE a few times, then hands out one real stream."""

    def __init__(self, stream: trio.SocketStream, failures: list[int]) -> None:
        self.stream: trio.SocketStream | None = stream
        self.failures = failures
        self.calls = 0

    async def accept(self) -> trio.SocketStream:
        self.calls += 1
        if self.failures:
            raise OSError(self.failures.pop(0), "simulated")
        if self.stream is not None:
            stream, self.stream = self.stream, None
            return stream
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_accept_keeps_going_through_emfile_and_enfile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An upstream nobody listens on: the accepted client must get its 421 (B13), which
    # proves the accept loop went on after the resource errors instead of dying.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    config = parse_config(f"OutAddress: 127.0.0.1:{port}\n")
    ours, theirs = trio.socket.socketpair()
    listener = _FlakyListener(trio.SocketStream(ours), [errno.EMFILE, errno.ENFILE])
    server = Server(config)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._accept_loop, listener, nursery)
            client = trio.SocketStream(theirs)
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = await client.receive_some(1024)
                assert chunk, data
                data += chunk
            assert data.startswith(b"421 ")
            nursery.cancel_scope.cancel()
        await client.aclose()
    assert listener.calls >= 3


async def test_accept_other_errors_propagate() -> None:
    config = parse_config("OutAddress: 127.0.0.1:25\n")
    ours, theirs = trio.socket.socketpair()
    listener = _FlakyListener(trio.SocketStream(ours), [errno.EBADF])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(OSError) as info:
                await Server(config)._accept_loop(listener, nursery)
    assert info.value.errno == errno.EBADF
    ours.close()
    theirs.close()


def test_raise_fd_limit_fits_max_connections() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        raise_fd_limit(500)
        new_soft, new_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert new_hard == hard
        wanted = 500 * FDS_PER_CONNECTION + 64
        expected = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        assert new_soft == expected
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_raise_fd_limit_never_lowers() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_fd_limit(1)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)


def test_listen_backlog_holds_a_burst_of_connections() -> None:
    """300 clients connecting at once (smtp-source -s 200 does that) must all get through
    the handshake while the server is busy: a small backlog drops SYNs and costs each of
    those clients a 1 s retransmission."""
    any_port = Address(AddressKind.TCP, "127.0.0.1", 0, None, "127.0.0.1:0")
    config = attrs.evolve(parse_config("OutAddress: 127.0.0.1:25\n"), listen=any_port)
    [listener] = bind_listeners(config)
    clients: list[socket.socket] = []
    try:
        address = listener.getsockname()
        for _ in range(300):
            client = socket.socket()
            client.setblocking(False)
            clients.append(client)
            assert client.connect_ex(address) in (0, errno.EINPROGRESS)
        poller = select.poll()
        for client in clients:
            poller.register(client, select.POLLOUT)
        connected: set[int] = set()
        deadline = time.monotonic() + 0.5
        while len(connected) < len(clients) and time.monotonic() < deadline:
            for fd, _event in poller.poll(50):
                connected.add(fd)
                poller.unregister(fd)
        assert len(connected) == len(clients)
    finally:
        for client in clients:
            client.close()
        listener.close()
