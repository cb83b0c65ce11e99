"""DrainDelay (docs/behaviour.md §11.10): after SIGTERM the server is not ready at once
(/readyz: draining) but goes on accepting and serving for DrainDelay seconds, so that a
balancer takes it out of its rotation before it refuses a connection; then it stops
accepting and drains as without the delay.  A second stop ends the delay at once.

The clock is Trio's MockClock without autojump: time moves only when the test jumps it, so
"during the delay" is certain whatever the machine's load."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from trio_proxsmtp.common.address import Address, AddressKind
from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.model import ConfigError
from trio_proxsmtp.daemon import cli, notify
from trio_proxsmtp.daemon.draining import Drain
from trio_proxsmtp.daemon.listeners import bind_listeners
from trio_proxsmtp.daemon.readiness import Readiness
from trio_proxsmtp.daemon.reload import applicable_reload
from trio_proxsmtp.daemon.server import Server
from trio_proxsmtp.testing import FakeUpstream, open_client

MESSAGE = b"Subject: drain\r\n\r\nbody\r\n"
CLOSED = "draining: listeners closed"


@attrs.define
class Running:
    server: Server
    port: int
    done: trio.Event


@asynccontextmanager
async def running_server(up: FakeUpstream, options: str) -> AsyncIterator[Running]:
    """A Server on a loopback port, run until the block's end (then stopped twice)."""
    config = parse_config(f"OutAddress: {up.address}\nShutdownTimeout: 30\n{options}")
    loopback = Address(AddressKind.TCP, "127.0.0.1", 0, None, "127.0.0.1:0")
    sockets = bind_listeners(attrs.evolve(config, listen=loopback))
    server = Server(config)
    done = trio.Event()

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await server.serve(sockets, task_status=task_status)
        done.set()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            yield Running(server, sockets[0].getsockname()[1], done)
            server.stop()
            server.stop()
    finally:
        for sock in sockets:
            sock.close()


async def send_one(port: int) -> int:
    async with open_client("127.0.0.1", port) as client:
        assert (await client.greeting()).code == 220
        replies = await client.send_message("s@x", ["r@x"], MESSAGE)
        await client.quit()
    return replies[-1].code


async def refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_accepts_and_serves_during_the_delay_then_stops_accepting(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with FakeUpstream() as up, running_server(up, "DrainDelay: 5\n") as run:
        ready = Readiness(lambda: run.server.config, lambda: run.server.draining)
        run.server.stop()
        # Not ready from the first moment: a balancer checking now takes us out...
        ok, body = await ready.check()
        assert (ok, json.loads(body)["reason"]) == (False, "draining")
        assert "draining: still accepting for 5 s (DrainDelay)" in caplog.text
        # ... while the clients it sent before its check are served as ever.
        mock_clock.jump(4.9)
        for _ in range(3):
            assert await send_one(run.port) == 250
        assert len(up.transactions) == 3
        assert CLOSED not in caplog.text and not run.done.is_set()
        # Past the delay the listener closes and, with no session open, the server ends.
        mock_clock.jump(0.2)
        with trio.fail_after(5):  # (the mock clock is frozen: this waits for real I/O)
            await run.done.wait()
        assert CLOSED in caplog.text
        assert await refused(run.port)
    assert caplog.text.index("still accepting") < caplog.text.index(CLOSED)


async def test_a_session_accepted_during_the_delay_is_drained_after_it(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with FakeUpstream() as up, running_server(up, "DrainDelay: 5\n") as run:
        run.server.stop()
        async with open_client("127.0.0.1", run.port) as client:
            assert (await client.greeting()).code == 220
            assert (await client.command("EHLO c")).code == 250
            # Idle when the listener closes: told 421, like the sessions open at SIGTERM.
            mock_clock.jump(5.1)
            assert (await client.read_reply(timeout=5)).code == 421
        with trio.fail_after(5):
            await run.done.wait()


async def test_a_second_stop_ends_the_delay_at_once(mock_clock: trio.testing.MockClock) -> None:
    async with FakeUpstream() as up, running_server(up, "DrainDelay: 3600\n") as run:
        run.server.stop()
        assert await send_one(run.port) == 250
        run.server.stop()  # a second SIGTERM: no more accepting, no grace period
        with trio.fail_after(5):
            await run.done.wait()
        assert await refused(run.port)


async def test_without_a_delay_accepting_stops_at_once(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with FakeUpstream() as up, running_server(up, "") as run:
        assert run.server.config.drain_delay == 0  # proxsmtpd 1.10's immediate stop
        run.server.stop()
        assert run.server.draining
        with trio.fail_after(5):
            await run.done.wait()
        assert await refused(run.port)
    assert "still accepting" not in caplog.text


def test_the_option_parses_and_reloads() -> None:
    out = "OutAddress: 127.0.0.1:25\n"
    assert parse_config(f"{out}DrainDelay: 12\n").drain_delay == 12.0
    for bad in ("-1", "soon", "1.5"):
        with pytest.raises(ConfigError, match="DrainDelay"):
            parse_config(f"{out}DrainDelay: {bad}\n")
    # SIGHUP applies a new DrainDelay (to the next SIGTERM): no restart needed.
    running = parse_config(out)
    new = parse_config(f"{out}DrainDelay: 20\n")
    applied, problems = applicable_reload(running, new, running.workers)
    assert applied is not None and applied.drain_delay == 20.0 and problems == []


def test_check_mode_accepts_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "proxsmtpd.conf"
    conf.write_text(f"OutAddress: 127.0.0.1:25\nTempDirectory: {tmp_path}\nDrainDelay: 15\n")
    assert cli.main(["-t", "-f", str(conf)]) == 0
    assert capsys.readouterr().out == f"config OK: {conf}\n"
    conf.write_text(f"OutAddress: 127.0.0.1:25\nTempDirectory: {tmp_path}\nDrainDelay: later\n")
    assert cli.main(["-t", "-f", str(conf)]) == 2
    assert f"{conf}:3: DrainDelay: " in capsys.readouterr().err


async def test_systemd_hears_of_the_stop_when_the_delay_starts(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        notify.take_socket({"NOTIFY_SOCKET": path})
        try:
            Drain().stop(7)
        finally:
            notify.forget()
        fields = receiver.recv(4096).decode().splitlines()
    assert fields == ["STOPPING=1", "STATUS=draining: still accepting for 7 s"]
