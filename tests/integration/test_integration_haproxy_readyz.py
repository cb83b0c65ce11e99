"""The shipped HAProxy config checks /readyz (contrib/haproxy/haproxy.cfg): an instance
drained with SIGTERM leaves the rotation before it refuses mail, and while it still
finishes its sessions, so that no new mail goes to it (docs/behaviour.md §11.10).

With DrainDelay the instance says 503 draining at once but accepts for DrainDelay seconds
more: HAProxy (checks every 300 ms, fall 1) marks it DOWN long before its listener closes,
so no client depends on HAProxy retrying a refused connection on the other instance."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from haproxy_support import ROOT, run_haproxy
from integration_support import free_port, spawn, wait_listening

from trio_proxsmtp.testing import FakeUpstream, open_client

pytestmark = pytest.mark.integration

MESSAGE = b"From: s@x\r\nSubject: t\r\n\r\nbody\r\n"
DRAIN_DELAY = 5  # seconds; far longer than HAProxy's inter x fall (300 ms x 1)
CLOSED = "draining: listeners closed"


@attrs.define
class Instance:
    port: int
    metrics_port: int
    log_path: Path
    process: trio.Process

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@asynccontextmanager
async def instance(workdir: Path, up: FakeUpstream) -> AsyncIterator[Instance]:
    workdir.mkdir()
    port, metrics_port = free_port(), free_port()
    config = workdir / "proxsmtpd.conf"
    config.write_text(
        f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\nTempDirectory: {workdir}\n"
        "ProxyProtocol: on\nProxyProtocolFrom: 127.0.0.1\nShutdownTimeout: 30\n"
        f"MetricsListen: 127.0.0.1:{metrics_port}\nWorkers: 1\nDrainDelay: {DRAIN_DELAY}\n"
    )
    argv = [sys.executable, "-m", "trio_proxsmtp", "-d", "3", "-f", str(config)]
    log = workdir / "proxy.log"
    async with spawn(argv, log=log, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}) as process:
        await wait_listening(port, process)
        await wait_listening(metrics_port, process)
        yield Instance(port, metrics_port, log, process)


async def send_through(front: int) -> int:
    async with open_client("127.0.0.1", front) as client:
        replies = await client.send_message("s@x", ["r@x"], MESSAGE)
        await client.quit()
    return replies[-1].code


async def test_a_draining_instance_leaves_the_rotation_before_it_refuses_mail(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with (
            FakeUpstream() as up,
            instance(tmp_path / "one", up) as one,
            instance(tmp_path / "two", up) as two,
            run_haproxy(
                tmp_path,
                [one.port, two.port],
                check_interval="300ms",
                metrics_ports=[one.metrics_port, two.metrics_port],
            ) as front,
        ):
            haproxy_log = tmp_path / "haproxy.log"
            # Both in rotation: mail reaches each.
            for _ in range(6):
                assert await send_through(front) == 250
            assert "client=" in one.log() and "client=" in two.log()
            # A session held open on `one` (in its DATA) keeps it draining after SIGTERM.
            async with open_client("127.0.0.1", front) as held:
                replies = await held.start_message("s@x", ["r@x"])
                assert replies[-1].code == 354
                # Which instance holds it: the one whose log shows an open session.
                await trio.sleep(0.2)
                holder, other = (
                    (one, two)
                    if one.log().count("accepted connection") > one.log().count("disconnect from")
                    else (two, one)
                )
                name = "proxsmtpd1" if holder is one else "proxsmtpd2"
                # Mail keeps coming through the balancer while the instance drains: the
                # instance goes on accepting until HAProxy has seen its 503, so no client
                # sees a refusal, and none needs HAProxy to retry elsewhere.
                codes: list[int] = []
                down = trio.Event()

                async def keep_sending() -> None:
                    while not down.is_set():
                        codes.append(await send_through(front))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keep_sending)
                    await trio.sleep(0.3)
                    holder.process.send_signal(signal.SIGTERM)
                    while f"proxsmtpd/{name} is DOWN" not in haproxy_log.read_text():
                        await trio.sleep(0.05)
                    # Out of the rotation BEFORE it stops accepting.
                    assert CLOSED not in holder.log(), holder.log()
                    down.set()
                assert f"still accepting for {DRAIN_DELAY} s (DrainDelay)" in holder.log()
                assert codes and set(codes) == {250}
                # Taken out by its /readyz (503: draining), not by a failed connection.
                went_down = next(
                    line
                    for line in haproxy_log.read_text().splitlines()
                    if f"proxsmtpd/{name} is DOWN" in line
                )
                assert "Layer7 wrong status" in went_down and "503" in went_down, went_down
                # Out of rotation, still running (draining): new mail goes to the other.
                assert holder.process.poll() is None
                assert "shut down\n" not in holder.log()
                accepted = holder.log().count("accepted connection")
                before = other.log().count("status=")
                for _ in range(6):
                    assert await send_through(front) == 250
                assert other.log().count("status=") == before + 6
                assert holder.log().count("accepted connection") == accepted
                # Its listener closes after the delay; the session it kept, in the middle
                # of its message, is finished with its real reply.
                with trio.fail_after(DRAIN_DELAY + 10):
                    while CLOSED not in holder.log():
                        await trio.sleep(0.05)
                assert holder.process.poll() is None
                await held.send(b"Subject: held\r\n\r\nbody\r\n.\r\n")
                assert (await held.read_reply()).code == 250
            with trio.fail_after(20):
                await holder.process.wait()
            assert holder.process.returncode == 0
    assert len(up.transactions) == 13 + len(codes)
