"""DrainDelay on the real daemon (docs/behaviour.md §11.10), alone and with Workers: after
SIGTERM /readyz says 503 draining at once, every worker goes on accepting and serving for
DrainDelay seconds, then closes its listener and drains; a second SIGTERM ends the delay."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import trio
from ops_support import free_port, proxy_process, write_config
from test_ops_health import http_get

from trio_proxsmtp.testing import FakeUpstream, open_client

MESSAGE = b"From: s@x\r\nSubject: t\r\n\r\nbody\r\n"
CLOSED = "draining: listeners closed"


def conf(tmp_path: Path, up: FakeUpstream, port: int, metrics: int, more: str) -> Path:
    return write_config(
        tmp_path / "proxsmtpd.conf",
        f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\nTempDirectory: {tmp_path}\n"
        f"MetricsListen: 127.0.0.1:{metrics}\n{more}",
    )


async def refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


@pytest.mark.parametrize("workers", [1, 2])
async def test_unready_but_accepting_for_the_delay(tmp_path: Path, workers: int) -> None:
    port, metrics_port = free_port(), free_port()
    with trio.fail_after(40):
        async with FakeUpstream() as up:
            more = f"Workers: {workers}\nDrainDelay: 3\nShutdownTimeout: 30\n"
            config = conf(tmp_path, up, port, metrics_port, more)
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving " if workers > 1 else "listening on", workers)
                await proxy.wait_log("metrics on ")
                proxy.signal(signal.SIGTERM)
                # Each worker applies it (the supervisor passes SIGTERM on).
                await proxy.wait_log("draining: still accepting for 3 s (DrainDelay)", workers)
                code, body = await http_get(metrics_port, "/readyz")
                assert (code, json.loads(body)["reason"]) == (503, "draining")
                for _ in range(2 * workers):
                    async with open_client("127.0.0.1", port) as client:
                        replies = await client.send_message("s@x", ["r@x"], MESSAGE)
                        assert replies[-1].code == 250
                        await client.quit()
                assert CLOSED not in proxy.log()  # all of that was within the delay
                await proxy.wait_log(CLOSED, workers)
                assert await refused(port)
                assert await proxy.wait_exit() == 0
    assert len(up.transactions) == 2 * workers


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_sigterm_ends_the_delay_and_the_grace(tmp_path: Path, workers: int) -> None:
    port, metrics_port = free_port(), free_port()
    with trio.fail_after(40):
        async with FakeUpstream() as up:
            more = f"Workers: {workers}\nDrainDelay: 3600\nShutdownTimeout: 300\n"
            config = conf(tmp_path, up, port, metrics_port, more)
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving " if workers > 1 else "listening on", workers)
                async with open_client("127.0.0.1", port) as client:
                    assert (await client.start_message("s@x", ["r@x"]))[-1].code == 354
                    proxy.signal(signal.SIGTERM)
                    await proxy.wait_log("still accepting for 3600 s (DrainDelay)", workers)
                    start = time.monotonic()
                    proxy.signal(signal.SIGTERM)
                    # The message in flight is cut short with 421, nothing delivered.
                    assert (await client.read_reply(timeout=20)).code == 421
                    assert await proxy.wait_exit() == 0
                assert time.monotonic() - start < 15  # neither DrainDelay nor the grace
    assert up.transactions == []
