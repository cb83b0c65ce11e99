"""Attack (issue 21, item 6): the second SIGTERM lost under Workers.  The supervisor passed
each SIGTERM on to its workers as a SIGTERM, about a millisecond apart; when the second came
before a worker had taken the first (a busy 2-core machine), the two were one pending
signal, the worker saw one, and it waited the whole ShutdownTimeout.  Now the supervisor
sends its second stop as another signal (workers.END_GRACE_SIGNAL), which cannot merge with
the first (docs/behaviour.md, section 11).

The test makes the bad timing certain instead of likely: both workers are stopped
(SIGSTOP) while the supervisor passes both SIGTERMs on, so that both are pending in each
worker when it runs again."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import trio
from ops_support import free_port, group_alive, proxy_process, wait_for, write_config

from trio_proxsmtp.daemon.server import Server
from trio_proxsmtp.daemon.signals import handle_signals
from trio_proxsmtp.daemon.workers import END_GRACE_SIGNAL
from trio_proxsmtp.testing import FakeUpstream, open_client

MESSAGE = b"Subject: second sigterm\r\n\r\nbody\r\n"
SHUTDOWN_TIMEOUT = 300
# Records its pid (= its process group), says it started, sleeps, passes the message on.
FILTER = 'echo $$ >> "$1/pids"\ntouch "$1/started"\nsleep "$2"\nexec cat\n'


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the processes for the block: signals sent to them meanwhile stay pending."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextmanager
def killed_at_the_end(pids: list[int]) -> Iterator[None]:
    """Whatever happens, these workers (still running our command line) are gone after."""
    own = {pid: _cmdline(pid) for pid in pids}
    try:
        yield
    finally:
        for pid, cmdline in own.items():
            if cmdline and _cmdline(pid) == cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)


async def test_a_second_sigterm_ends_the_grace_period_when_workers_see_both_late(
    tmp_path: Path,
) -> None:
    (tmp_path / "filter.sh").write_text(FILTER)
    (tmp_path / "spool").mkdir()
    port = free_port()
    with trio.fail_after(60):
        async with FakeUpstream() as up:
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n"
                f"TempDirectory: {tmp_path / 'spool'}\nWorkers: 2\n"
                f"FilterCommand: /bin/sh {tmp_path / 'filter.sh'} {tmp_path} 120\n"
                f"ShutdownTimeout: {SHUTDOWN_TIMEOUT}\n",
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving ", count=2)
                _, *workers = proxy.pids()
                assert len(workers) == 2, proxy.log()
                with killed_at_the_end(workers):
                    async with open_client("127.0.0.1", port) as client:
                        await client.command("EHLO c.example")
                        await client.command("MAIL FROM:<a@x>")
                        await client.command("RCPT TO:<b@x>")
                        await client.command("DATA")
                        await client.send(MESSAGE + b".\r\n")
                        await wait_for((tmp_path / "started").exists)
                        [pgid] = [int(p) for p in (tmp_path / "pids").read_text().split()]
                        with stopped(workers):
                            proxy.signal(signal.SIGTERM)
                            await proxy.wait_log("received SIGTERM: stopping 2 workers")
                            proxy.signal(signal.SIGTERM)
                            await proxy.wait_log("received SIGTERM again")
                        start = time.monotonic()
                        assert (await client.read_reply()).code == 421
                    assert await proxy.wait_exit() == 0
                    elapsed = time.monotonic() - start
                log = proxy.log()
            assert elapsed < 10, log  # not ShutdownTimeout (300 s)
            assert log.count("the supervisor received a second stop signal") == 2, log
            assert not group_alive(pgid)
            assert list((tmp_path / "spool").iterdir()) == []
            assert up.transactions == []


class _Server:
    """What handle_signals needs of a Server."""

    def __init__(self) -> None:
        self.draining = False
        self.stops = 0

    def stop(self) -> None:
        self.draining = True
        self.stops += 1


async def _signals(*signums: int) -> AsyncIterator[int]:
    for signum in signums:
        yield signum


async def test_the_supervisors_second_stop_counts_as_two_whichever_comes_first() -> None:
    # The kernel hands over pending signals lowest number first: SIGUSR2 before SIGTERM.
    for order in [(END_GRACE_SIGNAL, signal.SIGTERM), (signal.SIGTERM, END_GRACE_SIGNAL)]:
        server = _Server()
        await handle_signals(cast(Server, server), _signals(*order))
        assert server.draining and server.stops >= 2, order
    alone = _Server()
    await handle_signals(cast(Server, alone), _signals(END_GRACE_SIGNAL))
    assert alone.stops == 2
