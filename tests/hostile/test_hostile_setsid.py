"""Attack 9: a filter grandchild that calls setsid escaped the process-group kill.

The proxy is a child subreaper (conftest.py, as the daemon at start): an escaped process is
adopted by it when its parents die, carries its run's PROXSMTPD_FILTER_ID, and is killed
and reaped when the run ends. Checked by pid: nothing is left, not even a zombie.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from hostile_support import MESSAGE, filter_run, proxied

from trio_proxsmtp.stages import reaper
from trio_proxsmtp.stages.filter.verdict import FilterVerdictKind


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


def gone(pid: int) -> bool:
    """No such process, not even a zombie."""
    return not os.path.exists(f"/proc/{pid}")


def pids(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()]


async def test_setsid_grandchild_is_killed_after_the_run(spool_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # The grandchild keeps stdout and stderr open: on main the run hung to the timeout,
    # and the sleep outlived it.
    command = f"sh -c 'setsid sleep 1000 & echo $! > {pidfile}'; cat"
    with trio.fail_after(10):
        verdict, delivered = await filter_run(spool_dir, command)
    assert verdict.kind is FilterVerdictKind.ACCEPT and delivered == MESSAGE
    [pid] = pids(pidfile)
    assert gone(pid)


async def test_detached_daemon_with_its_own_child_is_killed(
    spool_dir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    # Double fork, setsid, standard streams closed, and a child of its own: a daemon.
    daemon = f"sleep 1000 & echo $$ $! > {pidfile}; wait"
    command = f"(setsid sh -c '{daemon}' </dev/null >/dev/null 2>&1 &); sleep 0.2; cat"
    with trio.fail_after(10):
        verdict, _ = await filter_run(spool_dir, command)
    assert verdict.kind is FilterVerdictKind.ACCEPT
    found = pids(pidfile)
    assert len(found) == 2
    assert all(gone(pid) for pid in found)


async def test_escapee_killed_when_the_filter_fails_or_is_cancelled(
    spool_dir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    command = f"setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > {pidfile}; sleep 30"
    with trio.fail_after(10):
        verdict, _ = await filter_run(spool_dir, command, timeout=0.5)
        assert verdict.kind is FilterVerdictKind.ERROR
        assert gone(pids(pidfile)[0])
        pidfile.unlink()
        with trio.move_on_after(0.5):
            await filter_run(spool_dir, command)
        assert gone(pids(pidfile)[0])


async def test_a_run_kills_only_its_own_escapees(spool_dir: Path, tmp_path: Path) -> None:
    slow, quick = tmp_path / "slow", tmp_path / "quick"
    escape = "setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > {}"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            slow_done = trio.Event()

            async def slow_run() -> None:
                wait = f"while [ ! -e {tmp_path}/go ]; do sleep 0.05; done"
                command = f"{escape.format(slow)}; {wait}; cat"
                verdict, _ = await filter_run(spool_dir, command)
                assert verdict.kind is FilterVerdictKind.ACCEPT
                slow_done.set()

            nursery.start_soon(slow_run)
            while not slow.exists() or not slow.read_text().strip():
                await trio.sleep(0.02)
            # Another connection's filter leaves an escapee and ends: only that one dies.
            other_dir = tmp_path / "other"
            other_dir.mkdir()
            verdict, _ = await filter_run(other_dir, escape.format(quick) + "; cat")
            assert verdict.kind is FilterVerdictKind.ACCEPT
            assert gone(pids(quick)[0])
            assert not gone(pids(slow)[0])
            (tmp_path / "go").touch()
            await slow_done.wait()
        assert gone(pids(slow)[0])


async def test_without_the_subreaper_the_sweep_does_nothing() -> None:
    reaper.disable_subreaper()
    assert await reaper.sweep("no-such-run", os.getpgrp()) == []


DAEMON = (
    'python3 -c "import os; os.closerange(3, 65536); os.setsid(); '
    "os.execvp('sleep', ['sleep', '1000'])\" </dev/null >/dev/null 2>&1 & echo $! > {}"
)


async def test_daemon_closing_every_descriptor_is_killed_by_the_background_sweep(
    spool_dir: Path, tmp_path: Path
) -> None:
    # It closed the descriptor that shows a run's end is clean, and another child of the
    # proxy exists, so the end of the run may miss it: sweep_adopted (which the server
    # runs every few seconds) must not.
    pidfile = tmp_path / "pid"
    with trio.fail_after(20):
        other = await trio.lowlevel.open_process(["sleep", "30"])
        try:
            verdict, _ = await filter_run(spool_dir, DAEMON.format(pidfile) + "; sleep 0.3; cat")
            assert verdict.kind is FilterVerdictKind.ACCEPT
            [pid] = pids(pidfile)
            while not gone(pid):
                await reaper.sweep_adopted()
                await trio.sleep(0.02)
            assert other.returncode is None  # not ours to touch: no marker
        finally:
            other.kill()
            await other.wait()


async def test_background_sweep_spares_runs_going_on(spool_dir: Path, tmp_path: Path) -> None:
    pidfile, go = tmp_path / "pid", tmp_path / "go"
    wait = f"while [ ! -e {go} ]; do sleep 0.05; done"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            # In a subshell that exits at once: the daemon is adopted by the proxy.
            command = f"({DAEMON.format(pidfile)}); {wait}; cat"
            nursery.start_soon(filter_run, spool_dir, command)
            while not pidfile.exists() or not pidfile.read_text().strip():
                await trio.sleep(0.02)
            [pid] = pids(pidfile)
            while f"PPid:\t{os.getpid()}\n" not in Path(f"/proc/{pid}/status").read_text():
                await trio.sleep(0.02)  # until the proxy has adopted it
            assert await reaper.sweep_adopted() == []
            assert not gone(pid)
            go.touch()
        while not gone(pid):
            await reaper.sweep_adopted()
            await trio.sleep(0.02)


async def test_setsid_grandchild_through_the_proxy(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    config = f"FilterCommand: sh -c 'setsid sleep 1000 & echo $! > {pidfile}'; cat"
    with trio.fail_after(30):
        async with proxied(config) as (upstream, proxy), proxy.connect() as client:
            assert (await client.send_message("s@x", ["r@x"], MESSAGE))[-1].code == 250
            [pid] = pids(pidfile)
            while not gone(pid):  # killed and reaped when the run ends
                await trio.sleep(0.01)
    assert upstream.transactions[0].message == MESSAGE
