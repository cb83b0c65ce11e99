"""Attack: SIGKILL the worker that owns a connection (issue 21, item 2; docs/behaviour.md
§11.7).

`Workers: 2`, `FilterType: file`, a filter that sleeps: the killed worker's named spool file
(a full copy of a client's message, never delivered) stayed in TempDirectory for good, and
its filter was re-parented away and kept running. Now the supervisor, a child subreaper,
kills the filter and what it started, removes the worker's files, and replaces the worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import trio
from ops_support import free_port, proxy_process, wait_for, write_config

from trio_proxsmtp.stages.spool import RECIPIENTS_KIND, Spool, named_prefix, sweep_files
from trio_proxsmtp.testing import FakeUpstream, open_client
from trio_proxsmtp.testing.client import dot_stuff

BOUND = 5.0  # seconds from the SIGKILL until nothing of the worker's work is left
# A file-mode filter that sleeps on "sleepy" messages, with a child in its group and one
# that left it (setsid), recording the three pids; other messages pass at once.
FILTER = """\
grep -q sleepy "$EMAIL" || exit 0
echo $$ >> "$1/pids"
setsid sleep 60 &
echo $! >> "$1/pids"
sleep 60 &
echo $! >> "$1/pids"
wait
"""


def gone(pid: int) -> bool:
    """No such process, not even a zombie."""
    return not os.path.exists(f"/proc/{pid}")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def recorded(tmp_path: Path) -> list[int]:
    path = tmp_path / "pids"
    return [int(word) for word in path.read_text().split()] if path.exists() else []


async def test_a_killed_worker_leaves_no_spool_file_and_no_filter(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (tmp_path / "filter.sh").write_text(FILTER)
    filters: list[int] = []
    try:
        with trio.fail_after(60):
            async with FakeUpstream() as up:
                port = free_port()
                config = write_config(
                    tmp_path / "proxsmtpd.conf",
                    f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\nWorkers: 2\n"
                    f"TempDirectory: {spool}\nFilterType: file\n"
                    f"FilterCommand: /bin/sh {tmp_path / 'filter.sh'} {tmp_path}\n",
                )
                with proxy_process(config, tmp_path / "proxy.log") as proxy:
                    await proxy.wait_log(" serving ", count=2)
                    async with open_client("127.0.0.1", port) as client:
                        replies = await client.start_message("a@x", ["b@x"])
                        assert replies[-1].code == 354
                        await client.send(dot_stuff(b"Subject: sleepy\r\n\r\nbody\r\n"))
                        await wait_for(lambda: len(recorded(tmp_path)) == 3)
                        filters = recorded(tmp_path)
                        worker = parent_of(filters[0])
                        assert worker in proxy.pids()[1:]
                        [left] = list(spool.iterdir())  # $EMAIL, named for its worker
                        assert left.name.startswith(f"proxsmtpd.{worker}_")

                        os.kill(worker, signal.SIGKILL)
                        killed = trio.current_time()
                        with trio.fail_after(BOUND):
                            await wait_for(
                                lambda: not list(spool.iterdir()) and all(map(gone, filters))
                            )
                        assert trio.current_time() - killed < BOUND
                        await client.read_eof()  # its connection died with it
                    assert up.transactions == []  # never answered, so never delivered

                    # Replaced as before, and the replacement works.
                    await proxy.wait_log(f"(pid {worker}) was killed by signal SIGKILL")
                    await proxy.wait_log(" serving ", count=3)
                    assert len(proxy.pids()) == 3
                    for _ in range(4):
                        async with open_client("127.0.0.1", port) as client:
                            replies = await client.send_message("a@x", ["b@x"], b"hello\r\n")
                            assert replies[-1].code == 250
                    proxy.signal(signal.SIGTERM)
                    assert await proxy.wait_exit() == 0
                log = proxy.log()
                for pid in filters:
                    assert f"killed pid {pid} left behind by a dead worker" in log
                assert f"removed {left}, left behind by worker pid {worker}" in log
    finally:
        for pid in filters:  # only if the test failed: this process may have adopted them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def test_only_the_dead_workers_own_files_are_swept(tmp_path: Path) -> None:
    with Spool.create(str(tmp_path)) as mine:
        assert Path(mine.path).name.startswith(named_prefix(pid=os.getpid()))
    dead, other = 4242, 42421  # the dead pid is a prefix of the other's digits
    names = {
        f"proxsmtpd.{dead}_abc123": True,
        f"{RECIPIENTS_KIND}{dead}_def456": True,
        f"proxsmtpd.{other}_abc123": False,
        f"proxsmtpd.{dead}abc123": False,
        "unrelated": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f"proxsmtpd.{dead}_dir").mkdir()  # not a regular file: left
    outside = tmp_path / "outside"
    outside.write_bytes(b"x")
    (tmp_path / f"proxsmtpd.{dead}_link").symlink_to(outside)  # a link: never followed
    removed = sweep_files(str(tmp_path), dead)
    assert sorted(removed) == sorted(str(tmp_path / n) for n, swept in names.items() if swept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            *(n for n, swept in names.items() if not swept),
            *(f"proxsmtpd.{dead}_{n}" for n in ("dir", "link")),
            "outside",
        ]
    )
    assert sweep_files(str(tmp_path / "missing"), dead) == []
