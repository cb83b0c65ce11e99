"""Issue 21, case 9: cut-short messages reported no time.  A message that spent 2 s in the
filter before its client left was logged `delay=0.00, delays=0.00/0.00/0.00`: only a stage
that ended handed its time to the session.  Now the connection's end says how long the
message had run, and the stage it was cut short in gets the rest (docs/behaviour.md §9.2).
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from hostile_support import MESSAGE, memory_connection

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.testing import FakeUpstream


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps only once every task waited 0.1 s of real time: a filter
    killed (a real process) dies before the clock moves on, so the times are exact."""
    return trio.testing.MockClock(autojump_threshold=0.1)


def summary_line(caplog: pytest.LogCaptureFixture) -> str:
    [line] = [r.getMessage() for r in caplog.records if "status=" in r.getMessage()]
    return line


@pytest.mark.parametrize(
    ("stage", "config", "delays"),
    [
        ("receive", "", "delay=1.50, delays=1.50/0.00/0.00"),
        (
            "filter",
            "FilterCommand: sleep 30; cat\nFilterTimeout: 60",
            "delay=2.00, delays=0.00/2.00/0.00",
        ),
        ("replay", "", "delay=1.25, delays=0.00/0.00/1.25"),
    ],
)
async def test_a_message_cut_short_logs_the_time_it_ran(
    stage: str,
    config: str,
    delays: str,
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    # The next server is slow to answer our DATA: the "replay" case is cut short there.
    up = FakeUpstream(delays={"DATA": 10.0})
    with trio.fail_after(120):
        async with memory_connection(config, up) as (client, connection):
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            if stage == "receive":
                await client.send(MESSAGE[:5])
                await trio.sleep(1.5)
            else:
                await client.send(MESSAGE + b".\r\n")
                # The connection waits for the filter (a real process) or the next server.
                await trio.testing.wait_all_tasks_blocked()
                expected = State.FILTERING if stage == "filter" else State.REPLAY
                assert connection.session.state is expected
                await trio.sleep(2.0 if stage == "filter" else 1.25)
            await client.stream.send_eof()  # the client leaves
            await client.read_eof()
    line = summary_line(caplog)
    assert "status=FILTER-ERROR, reason=client disconnected" in line
    assert line.endswith(delays)
