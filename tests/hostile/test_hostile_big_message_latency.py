"""Issue 21, case 15: one big message must not stall a worker's other sessions.

One worker (`Workers: 1`) takes a 50 MB message through `FilterCommand: cat` (spooled,
piped through the filter, its output read back and sent on) while 20 other sessions loop
EHLO/NOOP/MAIL/RSET and new clients keep connecting.  Every reply and banner those see is
timed; the bound asserted is generous for a shared 2-core machine (docs/behaviour.md
§11.19 states the numbers measured).  The next server is Postfix's smtp-sink, a separate
process, so that the test process only runs the clients.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest
import trio
from ops_support import free_port, proxy_process, wait_for, write_config

from trio_proxsmtp.testing import open_client

pytestmark = pytest.mark.integration

BIG = 50 * 1024 * 1024
SESSIONS = 20
# Measured on the shared 2-core machine (issue 21), load average 5 to 12: command replies
# p50 1.6-24 ms, p99 13-164 ms, max 58-370 ms; banners p50 8-101 ms, max 24-431 ms; the
# big message took 1.1-6.3 s.  The same loops without the big message, load 12: replies
# p99 91 ms, max 248 ms.  Bounds: p99 of replies, max of both, and no wait longer than a
# third of the big message's own time (a worker stalled for the message, or for a good
# part of it, fails that however fast the machine).
P99_BOUND = 0.3  # seconds
MAX_BOUND = 1.0
MAX_SHARE = 1 / 3


def big_message() -> bytes:
    line = b"x" * 98 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (BIG // len(line))


def send_big(port: int, result: dict[str, object]) -> None:
    """One client sending the big message with blocking sockets (in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            while (line := reader.readline())[3:4] == b"-":
                pass
            return line

        reply()
        for command in (b"EHLO big.example", b"MAIL FROM:<s@x>", b"RCPT TO:<r@x>", b"DATA"):
            sock.sendall(command + b"\r\n")
            reply()
        started = time.monotonic()
        body = memoryview(big_message())
        for start in range(0, len(body), 1 << 16):
            sock.sendall(body[start : start + (1 << 16)])
        sock.sendall(b".\r\n")
        result["reply"] = reply()
        result["seconds"] = time.monotonic() - started
        sock.sendall(b"QUIT\r\n")
        reply()


async def command_loop(port: int, done: threading.Event, latencies: list[float]) -> None:
    async with open_client("127.0.0.1", port, timeout=30) as client:
        await client.greeting()
        while not done.is_set():
            for line in ("EHLO loop.example", "NOOP", "MAIL FROM:<a@x>", "RSET"):
                started = trio.current_time()
                reply = await client.command(line)
                latencies.append(trio.current_time() - started)
                assert reply.code == 250, reply
        await client.quit()


async def banner_loop(port: int, done: threading.Event, latencies: list[float]) -> None:
    while not done.is_set():
        started = trio.current_time()
        async with open_client("127.0.0.1", port, timeout=30) as client:
            reply = await client.greeting()
            latencies.append(trio.current_time() - started)
            assert reply.code == 220, reply
            await client.quit()
        await trio.sleep(0.02)


def p99(latencies: list[float]) -> float:
    """The nearest-rank 99th percentile."""
    ordered = sorted(latencies)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


def summary(latencies: list[float]) -> str:
    return (
        f"n={len(latencies)} p50={1000 * statistics.median(latencies):.1f} ms "
        f"p99={1000 * p99(latencies):.1f} ms max={1000 * max(latencies):.1f} ms"
    )


async def test_a_50_mb_message_through_cat_leaves_other_sessions_responsive(
    tmp_path: Path,
) -> None:
    sink_program = shutil.which("smtp-sink") or (
        "/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None
    )
    if sink_program is None:
        pytest.skip("smtp-sink is missing: apt-get install postfix")
    sink_port, port = free_port(), free_port()
    spool = tmp_path / "spool"
    spool.mkdir()
    as_nobody = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink refuses root
    sink = subprocess.Popen(
        [sink_program, *as_nobody, f"127.0.0.1:{sink_port}", "64"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        config = write_config(
            tmp_path / "proxsmtpd.conf",
            f"Listen: 127.0.0.1:{port}\nOutAddress: 127.0.0.1:{sink_port}\n"
            f"TempDirectory: {spool}\nWorkers: 1\nFilterCommand: cat\n"
            "MaxConnections: 200\n",
        )
        with proxy_process(config, tmp_path / "proxy.log") as proxy:
            result: dict[str, object] = {}
            done = threading.Event()
            replies: list[float] = []
            banners: list[float] = []

            def big() -> None:
                try:
                    send_big(port, result)
                finally:
                    done.set()

            with trio.fail_after(60):
                await proxy.started()
                async with trio.open_nursery() as nursery:
                    for _ in range(SESSIONS):
                        nursery.start_soon(command_loop, port, done, replies)
                    nursery.start_soon(banner_loop, port, done, banners)
                    await trio.sleep(0.3)  # the loops are running before the big one starts
                    await trio.to_thread.run_sync(big)
            print(f"\nbig message: {result}")
            print(f"command replies: {summary(replies)}")
            print(f"banners: {summary(banners)}")
            assert isinstance(result["reply"], bytes) and result["reply"].startswith(b"250 ")
            assert len(banners) >= 10 and len(replies) >= 500
            assert p99(replies) < P99_BOUND, summary(replies)
            seconds = result["seconds"]
            assert isinstance(seconds, float)
            for latencies in (replies, banners):
                assert max(latencies) < MAX_BOUND, summary(latencies)
                assert max(latencies) < MAX_SHARE * seconds, summary(latencies)
            with trio.fail_after(10):
                await wait_for(lambda: not list(spool.iterdir()))  # the spools are gone
    finally:
        sink.terminate()
        sink.wait(10)
