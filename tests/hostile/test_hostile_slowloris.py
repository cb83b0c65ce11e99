"""Attack 1: slowloris.  TimeOut measured only the silence between reads, so a client
sending one byte every few seconds held its connection for ever, and 64 of them locked
every real client out.  Now every record has a deadline (CommandTimeOut, MinDataRate,
SessionTimeOut), waits shorten under stress, and one address holds at most
MaxConnectionsPerClient connections."""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path

import pytest
import trio
import trio.testing
from hostile_support import MESSAGE, memory_connection
from ops_support import free_port, proxy_process, write_config

from trio_proxsmtp.relay.deadlines import Stress
from trio_proxsmtp.testing import FakeUpstream, open_client, run_proxy
from trio_proxsmtp.testing.client import FakeClient

REFUSED = b"421 4.7.0 Error: too many connections from 127.0.0.1\r\n"
TIMEOUT_REPLY = b"421 4.4.2 smtp.passthru Error: timeout exceeded\r\n"


async def drip(client: FakeClient, data: bytes, interval: float) -> None:
    """Send `data` one byte every `interval` seconds until done or the proxy closes."""
    for byte in data:
        try:
            await client.send(bytes([byte]))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep(interval)


async def closed_at(client: FakeClient) -> float:
    """Read until the proxy closes; when it did."""
    with pytest.raises(EOFError):
        while True:
            await client.read_reply()
    return trio.current_time()


async def test_a_dripped_command_line_ends_at_command_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = "TimeOut: 5\nCommandTimeOut: 30"
    async with FakeUpstream() as up, memory_connection(config, up) as (client, _):
        await client.greeting()
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip, client, b"EHLO " + b"x" * 200 + b"\r\n", 2.0)
            end = await closed_at(client)
            nursery.cancel_scope.cancel()
    assert 30 <= end - start < 32  # not reset by each byte (the old code: never)
    assert client.received.endswith(TIMEOUT_REPLY)
    assert "CommandTimeOut exceeded" in caplog.text
    assert not any(c.startswith(b"EHLO") for c in up.commands)


async def test_a_dripped_message_ends_by_min_data_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 1 byte every 2 s is 0.5 B/s: with MinDataRate 500 the message has TimeOut (5 s) plus
    # 1/500 s per byte, so it ends within ~6 s.
    async with FakeUpstream() as up, memory_connection("TimeOut: 5", up) as (client, _):
        assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip, client, MESSAGE * 100, 2.0)
            end = await closed_at(client)
            nursery.cancel_scope.cancel()
    assert end - start < 8
    assert client.received.endswith(TIMEOUT_REPLY)
    assert up.transactions == []


async def test_a_message_at_the_min_data_rate_is_accepted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 1,000 bytes per second for 60 s (far past TimeOut 5 in all) keeps up with 500 B/s.
    body = b"".join(b"%08d" % i + b"x" * 90 + b"\r\n" for i in range(600))
    async with FakeUpstream() as up, memory_connection("TimeOut: 5", up) as (client, _):
        assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
        for i in range(0, len(body), 1000):
            await client.send(body[i : i + 1000])
            await trio.sleep(1.0)
        await client.send(b".\r\n")
        assert (await client.read_reply()).code == 250
    assert up.transactions[0].message == body


async def test_session_timeout_lets_a_message_in_flight_finish(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = "TimeOut: 10\nSessionTimeOut: 60"
    async with FakeUpstream() as up, memory_connection(config, up) as (client, _):
        await client.greeting()
        start = trio.current_time()
        while trio.current_time() - start < 55:  # busy, never idle: TimeOut never fires
            assert (await client.command("NOOP")).code == 250
            await trio.sleep(4)
        assert (await client.start_message("s@x", ["r@x"])).pop().code == 354
        for line in MESSAGE.splitlines(keepends=True):  # the session deadline passes here
            await client.send(line)
            await trio.sleep(2)
        assert trio.current_time() - start > 60
        await client.send(b".\r\n")
        assert (await client.read_reply()).code == 250  # the message in flight finished
        await closed_at(client)  # then the session ends at once
    assert client.received.endswith(TIMEOUT_REPLY)
    assert "SessionTimeOut exceeded" in caplog.text
    assert len(up.transactions) == 1


async def test_under_stress_client_waits_use_stress_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stress = Stress(on=True)
    config = "TimeOut: 180\nStressTimeOut: 10"
    async with (
        FakeUpstream() as up,
        memory_connection(config, up, stress=stress) as (client, _),
    ):
        await client.greeting()
        start = trio.current_time()
        end = await closed_at(client)
    assert 10 <= end - start < 11
    assert client.received.endswith(TIMEOUT_REPLY)


async def test_stress_cuts_a_client_wait_already_under_way(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A slowloris connected before the stress began must not keep its long TimeOut: the
    # wait under way is cut to StressTimeOut from its start when the stress comes.
    stress = Stress()
    config = "TimeOut: 180\nStressTimeOut: 10"
    async with (
        FakeUpstream() as up,
        memory_connection(config, up, stress=stress) as (client, _),
    ):
        await client.greeting()
        start = trio.current_time()
        await trio.sleep(6)
        stress.switch(True)  # the server reached STRESS_FRACTION meanwhile
        end = await closed_at(client)
    assert 10 <= end - start < 11
    assert client.received.endswith(TIMEOUT_REPLY)
    assert "StressTimeOut exceeded" in caplog.text


async def test_stress_switches_on_and_off_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(30):
        async with (
            FakeUpstream() as up,
            run_proxy("MaxConnections: 4", upstream=up) as proxy,
            proxy.connect() as a,
            proxy.connect() as b,
        ):
            # STRESS_FRACTION 0.75 of 4: on from the third connection.
            await a.greeting()
            await b.greeting()
            assert "stress:" not in caplog.text
            async with proxy.connect() as c:
                await c.greeting()
                assert "stress: 3 of 4 connections open" in caplog.text
                await c.quit()
            await up.wait_until(lambda: up.active_connections == 2)
            while "stress over" not in caplog.text:
                await trio.sleep(0.01)


async def open_from(source: str, port: int) -> FakeClient:
    """A client connecting from another loopback address (127.0.0.0/8 is all local)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return FakeClient(trio.SocketStream(sock), timeout=10)


async def test_one_address_cannot_take_every_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # MaxConnections 8, no exceptions: 127.0.0.1 gets half (4); the slowloris from it is
    # refused past that with 421 4.7.0, and a client from another address still gets in.
    config = "MaxConnections: 8\nConnectionLimitExceptions: none\nTimeOut: 180"
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
            port = proxy.port
            held = [await open_from("127.0.0.1", port) for _ in range(4)]
            for client in held:
                assert (await client.greeting()).code == 220
                await client.send(b"EH")  # the slowloris' first bytes
            refused = [await open_from("127.0.0.1", port) for _ in range(4)]
            for client in refused:
                reply = await client.read_reply()
                assert (
                    reply.to_bytes() == b"421 4.7.0 Error: too many connections from 127.0.0.1\r\n"
                )
                assert await client.read_eof() == b""
            other = await open_from("127.0.0.2", port)
            assert (await other.greeting()).code == 220
            assert (await other.send_message("s@x", ["r@x"], MESSAGE))[-1].code == 250
            for client in [*held, *refused, other]:
                await client.aclose()
    assert "too many connections from 127.0.0.1 (max 4): refused" in caplog.text


@pytest.mark.parametrize("workers", [1, 2])
async def test_fifty_sessions_from_loopback_with_the_default_config(
    tmp_path: Path, workers: int
) -> None:
    # The local MTA hands over everything from 127.0.0.1: it is exempt by default, with
    # one process or with workers. With two, 50 is more than one worker's share of
    # MaxConnections (32): the kernel may offer a burst to one worker, which must leave
    # what it cannot take to the other rather than answer "421 busy".
    with trio.fail_after(120):
        async with FakeUpstream() as up:
            port = free_port()
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n"
                f"TempDirectory: {tmp_path}\nWorkers: {workers}\n",
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving " if workers > 1 else "listening on", count=workers)
                codes: list[int] = []
                gate = trio.Event()

                async def session(i: int) -> None:
                    async with open_client("127.0.0.1", port) as client:
                        assert (await client.greeting()).code == 220
                        await gate.wait()  # all 50 open at once
                        replies = await client.send_message("s@x", [f"r{i}@x"], MESSAGE)
                        codes.append(replies[-1].code)
                        await client.quit()

                async with trio.open_nursery() as nursery:
                    for i in range(50):
                        nursery.start_soon(session, i)
                    await up.wait_until(lambda: up.active_connections == 50)
                    gate.set()
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
    assert codes == [250] * 50
    assert len(up.transactions) == 50
