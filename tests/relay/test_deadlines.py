"""ClientDeadlines (relay/deadlines.py): what each limit is under stress is worked out once,
and every deadline still follows the shared `Stress` flag as it switches."""

from __future__ import annotations

import math

import trio

from trio_proxsmtp.relay.deadlines import ClientDeadlines, Stress


def test_idle_and_command_deadlines_follow_the_stress_flag() -> None:
    stress = Stress()
    deadlines = ClientDeadlines(180.0, 300.0, stress_timeout=10.0, stress=stress)
    assert deadlines.idle() == 180.0
    assert deadlines.command_deadline(5.0) == (305.0, "CommandTimeOut")
    stress.switch(True)
    assert deadlines.idle() == 10.0
    assert deadlines.command_deadline(5.0) == (15.0, "CommandTimeOut")
    stress.switch(False)
    assert deadlines.idle() == 180.0


def test_stress_never_lengthens_a_shorter_limit_and_is_off_without_stress_timeout() -> None:
    short = ClientDeadlines(5.0, 3.0, stress_timeout=10.0, stress=Stress(on=True))
    assert short.idle() == 5.0 and short.command_deadline(0.0) == (3.0, "CommandTimeOut")
    off = ClientDeadlines(180.0, 300.0, stress=Stress(on=True))
    assert off.idle() == 180.0 and off.command_deadline(0.0)[0] == 300.0


def test_session_deadline_wins_when_sooner() -> None:
    deadlines = ClientDeadlines(180.0, 300.0, session_deadline=50.0)
    assert deadlines.command_deadline(0.0) == (50.0, "SessionTimeOut")


async def test_data_deadlines_use_the_stressed_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stress = Stress()
    deadlines = ClientDeadlines(180.0, min_data_rate=100, stress_timeout=10.0, stress=stress)
    now = trio.current_time()
    assert deadlines.data_start() == now + 180.0
    assert deadlines.data_read(now + 1.0, 200) == now + 3.0  # 200 bytes at 100 B/s: +2 s
    stress.switch(True)
    assert deadlines.data_start() == now + 10.0
    assert deadlines.data_read(now + 9.0, 500) == now + 10.0  # capped at the idle limit
    assert ClientDeadlines(180.0).data_start() == math.inf
