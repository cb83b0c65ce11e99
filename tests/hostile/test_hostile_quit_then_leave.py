"""Issue 21, case 5: QUIT, then close, while the filter runs: the message was delivered.

The client sent its message and final dot, waited, sent QUIT and closed (swaks does this
on its own timeout).  It never saw a 250 and will send the message again: a duplicate.  A
plain close was handled (nothing delivered); the pipelined QUIT hid the departure.  Now
the client's end of stream before its final reply means it is gone, whatever it pipelined
before: the filter's process group is killed, nothing is delivered, and the log says so
(docs/behaviour.md §5).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio
from hostile_support import MESSAGE, proxied

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.client import FakeClient


async def wait_for_file(path: Path) -> None:
    with trio.fail_after(10):
        while not path.exists() or not path.read_text().strip():
            await trio.sleep(0.02)


async def wait_group_gone(pgid: int) -> None:
    """No process is left in the group (a zombie counts as left: it is reaped too)."""
    with trio.fail_after(5):
        while True:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            await trio.sleep(0.02)


@pytest.mark.parametrize("how", ["quit-after-waiting", "quit-pipelined-with-the-dot"])
async def test_quit_then_close_while_the_filter_runs_delivers_nothing(
    how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    pidfile, done = tmp_path / "pid", tmp_path / "done"
    # The shell is the group's leader ($$ is its pgid); on main it woke after 3 s, the
    # message went upstream, and the client's retry would have delivered it twice.
    config = f"FilterCommand: echo $$ > {pidfile}; sleep 3; touch {done}; cat"
    with trio.fail_after(20):
        async with proxied(config) as (up, proxy):
            async with proxy.connect() as client:
                replies = await client.start_message("s@x", ["r@x"], helo="c")
                assert replies[-1].code == 354
                if how == "quit-pipelined-with-the-dot":
                    await client.send(MESSAGE + b".\r\nQUIT\r\n")
                    await wait_for_file(pidfile)
                else:
                    await client.send(MESSAGE + b".\r\n")
                    await wait_for_file(pidfile)
                    await client.send(b"QUIT\r\n")
            # (the client closed)
            await up.wait_until(lambda: up.active_connections == 0)
            await wait_group_gone(int(pidfile.read_text()))
            assert not done.exists()  # killed in its sleep, not finished
            assert up.transactions == [] and b"DATA" not in up.commands
    assert "client disconnected before its message was answered (after pipelining 6 bytes)" in (
        caplog.text
    )
    assert "status=FILTER-ERROR, reason=client disconnected" in caplog.text


async def _quit_and_close_during_the_replay(client: FakeClient, up: FakeUpstream) -> None:
    assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
    await client.send(MESSAGE + b".\r\n")
    # Our DATA is upstream, its 354 late: the QUIT and the close arrive meanwhile.
    await up.wait_until(lambda: b"DATA" in up.commands)
    await client.send(b"QUIT\r\n")


async def test_quit_then_close_during_the_replay_sends_no_final_dot(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # No filter, a socket: the departure is seen by the peek before the final "." (which
    # on main saw the QUIT's bytes, not the end of stream behind them).
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    with trio.fail_after(30):
        async with proxied("", FakeUpstream(delays={"DATA": 2.0})) as (up, proxy):
            async with proxy.connect() as client:
                await _quit_and_close_during_the_replay(client, up)
            await up.wait_until(lambda: up.active_connections == 0)
            assert up.transactions == []
            assert b"Subject: t" not in bytes(up.received)
    assert "closed the connection before its message was answered" in caplog.text
