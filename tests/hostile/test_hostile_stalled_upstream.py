"""Attack 2: an upstream that dribbles.  Every read came within TimeOut, so nothing ended
the wait: a banner dribbled one byte every 2 s kept the client waiting for ever, and the
shielded keepalive NOOP kept a session (and the process, through SIGTERM) alive after its
client left.  Now a whole reply must arrive within ReplyTimeOut, and a keepalive exchange
loses its shield when the connection ends by an error or a cancellation."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from hostile_support import MESSAGE, memory_connection

from trio_proxsmtp.testing import open_client
from trio_proxsmtp.testing.client import FakeClient

UPSTREAM_TIMED_OUT = b"421 4.4.1 smtp.passthru Error: upstream timed out\r\n"


async def dribble_forever(stream: trio.abc.Stream, prefix: bytes = b"") -> None:
    """Send `prefix`, then an endless multi-line reply one byte every 2 s."""
    await stream.send_all(prefix)
    while True:
        for byte in b"250-still talking\r\n":
            await stream.send_all(bytes([byte]))
            await trio.sleep(2)


def keepalive_dribbler(
    closed: list[float], noop: trio.Event | None = None
) -> Callable[[trio.abc.Stream], object]:
    """An upstream that answers normally until a NOOP, then dribbles its reply for ever;
    records when the proxy closed the connection (and sets `noop` at the NOOP)."""

    async def handle(stream: trio.abc.Stream) -> None:
        buffer = b""
        try:
            await stream.send_all(b"220 up ESMTP\r\n")
            while True:
                while b"\n" not in buffer:
                    data = await stream.receive_some(4096)
                    if not data:
                        closed.append(trio.current_time())
                        return
                    buffer += data
                line, buffer = buffer.split(b"\n", 1)
                if line.upper().startswith(b"NOOP"):
                    if noop is not None:
                        noop.set()
                    await dribble_forever(stream)
                await stream.send_all(b"250 ok\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            closed.append(trio.current_time())

    return handle


async def test_a_dribbled_banner_ends_at_reply_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    config = "TimeOut: 5\nReplyTimeOut: 30"
    async with memory_connection(config, dribble_forever) as (client, _):
        start = trio.current_time()
        reply = await client.read_reply()
        assert trio.current_time() - start < 31  # the old code: never
    assert reply.to_bytes() == UPSTREAM_TIMED_OUT
    assert "waiting for a whole reply (ReplyTimeOut)" in caplog.text


async def test_keepalive_exchange_ends_when_the_client_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    closed: list[float] = []
    config = "TimeOut: 5\nKeepAlives: 1\nMinDataRate: 0"
    async with memory_connection(config, keepalive_dribbler(closed)) as (client, _):
        assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
        await client.send(MESSAGE[:5])
        await trio.sleep(3)  # the NOOP went out at 1 s and is being dribbled
        await client.aclose()
        left = trio.current_time()
        while not closed:
            await trio.sleep(1)
            assert trio.current_time() - left < 60, "the session outlived its client"
    assert closed[0] - left <= 2  # the dribbler notices at its next byte (every 2 s)


async def test_keepalive_exchange_finishing_a_phase_is_bounded_by_reply_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    closed: list[float] = []
    config = "TimeOut: 5\nKeepAlives: 1\nMinDataRate: 0\nReplyTimeOut: 20"
    async with memory_connection(config, keepalive_dribbler(closed)) as (client, _):
        assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
        await client.send(MESSAGE[:5])
        await trio.sleep(3)
        noop_sent = trio.current_time() - 2
        await client.send(MESSAGE[5:] + b".\r\n")  # the phase ends while the NOOP dribbles
        reply = await client.read_reply()
        assert trio.current_time() - noop_sent < 22
    assert reply.to_bytes() == UPSTREAM_TIMED_OUT


# -- the real process: SIGTERM and a second SIGTERM --------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve_dribbler(noop: trio.Event, task_status: trio.TaskStatus[int]) -> None:
    """A TCP upstream (127.0.0.1, port 0) that dribbles its NOOP replies."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    handler = keepalive_dribbler([], noop)

    async def handle(stream: trio.SocketStream) -> None:
        await handler(stream)  # type: ignore[func-returns-value]

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(port)


async def drip_body(client: FakeClient) -> None:
    try:
        while True:
            await client.send(b"x")
            await trio.sleep(1)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def wait_for_log(path: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text(errors="replace")
        await trio.sleep(0.05)


@pytest.mark.parametrize("second_sigterm", [False, True])
async def test_sigterm_ends_the_process_whatever_the_upstream_does(
    tmp_path: Path, second_sigterm: bool
) -> None:
    shutdown = 3 if not second_sigterm else 60
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            noop = trio.Event()
            up_port = await nursery.start(serve_dribbler, noop)
            port = free_port()
            (tmp_path / "spool").mkdir()
            config = tmp_path / "proxsmtpd.conf"
            config.write_text(
                f"Listen: 127.0.0.1:{port}\nOutAddress: 127.0.0.1:{up_port}\n"
                f"TempDirectory: {tmp_path / 'spool'}\nTimeOut: 30\nKeepAlives: 1\n"
                f"MinDataRate: 0\nShutdownTimeout: {shutdown}\n"
            )
            log = tmp_path / "proxy.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "trio_proxsmtp", "-d", "3", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                await wait_for_log(log, "listening on", proc)
                async with open_client("127.0.0.1", port, timeout=30) as client:
                    assert (await client.start_message("s@x", ["r@x"]))[-1].code == 354
                    # In the middle of its message, and still sending (never idle): only the
                    # upstream holds the session.
                    nursery.start_soon(drip_body, client)
                    await noop.wait()
                    await trio.sleep(2.5)  # the NOOP's reply is being dribbled
                    proc.send_signal(signal.SIGTERM)
                    start = time.monotonic()
                    if second_sigterm:
                        await wait_for_log(log, "received SIGTERM", proc)
                        proc.send_signal(signal.SIGTERM)
                    while proc.poll() is None:
                        await trio.sleep(0.05)
                        assert time.monotonic() - start < 20, log.read_text()
                    elapsed = time.monotonic() - start
                # ShutdownTimeout + a little; at once after the second SIGTERM.
                assert elapsed < (2.0 if second_sigterm else shutdown + 2.0), elapsed
                assert proc.returncode == 0, log.read_text()
                assert list((tmp_path / "spool").iterdir()) == []
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
            nursery.cancel_scope.cancel()
