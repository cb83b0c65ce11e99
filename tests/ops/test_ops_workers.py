"""`Workers: N` on the real `python -m trio_proxsmtp -d 3` process: pre-forked workers under a
supervisor that passes signals on, replaces dead workers, and leaves nothing behind.

To reach every worker deterministically the tests set MaxConnections equal to Workers, so
each worker's share is one session: while a client holds a session on one worker, that
worker leaves new clients to the other one (or, when both are full, answers "421 busy").
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import attrs
import pytest
import trio
from ops_support import background, free_port, proxy_process, wait_for, write_config

from trio_proxsmtp.common.log import ID_PATTERN, process_connection_ids
from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.daemon.admission import worker_share
from trio_proxsmtp.daemon.handoff import HANDOFF_DELAY
from trio_proxsmtp.daemon.refusals import BUSY_REPLY
from trio_proxsmtp.daemon.reload import applicable_reload
from trio_proxsmtp.daemon.server import Server
from trio_proxsmtp.daemon.workers import describe_exit
from trio_proxsmtp.testing import FakeClient, FakeUpstream, open_client

MESSAGE = b"Subject: workers\r\n\r\nbody\r\n"
# Records its pid (filters run in their own session) and passes the message through.
FILTER = 'echo $$ >> "$1/pids"\nexec cat\n'
WORKER_RE = re.compile(r"worker (\d+) of (\d+) started \(pid (\d+)\)")
ACCEPTED_RE = re.compile(
    rf"^\S+ proxsmtpd\[(\d+)\]: ({ID_PATTERN}): accepted connection", re.MULTILINE
)


def setup(tmp_path: Path, up: FakeUpstream, extra: str) -> tuple[Path, int]:
    (tmp_path / "filter.sh").write_text(FILTER)
    port = free_port()
    config = write_config(
        tmp_path / "proxsmtpd.conf",
        f"Listen: 127.0.0.1:{port}\n"
        f"OutAddress: {up.address}\n"
        f"TempDirectory: {tmp_path}\n"
        f"FilterCommand: /bin/sh {tmp_path / 'filter.sh'} {tmp_path}\n"
        f"{extra}",
    )
    return config, port


def proc_stat(pid: int) -> list[str] | None:
    """state, ppid, pgrp, ... of a live process; None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields


def alive(pid: int) -> bool:
    return proc_stat(pid) is not None


def kill_quietly(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def workers_started(log: str) -> list[tuple[int, int]]:
    """(worker number, pid) for every "worker K of N started" line, in order."""
    return [(int(k), int(pid)) for k, _n, pid in WORKER_RE.findall(log)]


def filter_pids(tmp_path: Path) -> list[int]:
    path = tmp_path / "pids"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


async def one_session_per_worker(stack: AsyncExitStack, port: int, count: int) -> list[FakeClient]:
    """Greeted clients, one held on each worker (needs MaxConnections == Workers)."""
    clients: list[FakeClient] = []
    while len(clients) < count:
        client = await stack.enter_async_context(open_client("127.0.0.1", port))
        if (await client.greeting()).code == 220:
            clients.append(client)
        else:  # that worker's share is taken: try again, the kernel may pick the other
            await client.aclose()
    return clients


async def test_two_workers_share_the_load_and_stop_cleanly(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            config, port = setup(tmp_path, up, "Workers: 2\nMaxConnections: 2\n")
            pidfile = tmp_path / "proxsmtpd.pid"
            with proxy_process(config, tmp_path / "proxy.log", "-p", str(pidfile)) as proxy:
                await proxy.wait_log(" serving ", count=2)
                supervisor = proxy.proc.pid
                assert pidfile.read_text() == f"{supervisor}\n"
                pids = [pid for _k, pid in workers_started(proxy.log())]
                assert sorted(k for k, _pid in workers_started(proxy.log())) == [1, 2]
                assert len(set(pids)) == 2 and supervisor not in pids
                for pid in pids:
                    stat = proc_stat(pid)
                    assert stat is not None and int(stat[1]) == supervisor

                async with AsyncExitStack() as stack:
                    clients = await one_session_per_worker(stack, port, 2)
                    # MaxConnections is shared out: both shares are taken now.
                    async with open_client("127.0.0.1", port) as third:
                        assert (await third.greeting()).code == 421
                    for n in range(20):
                        body = f"Subject: m{n}\r\n\r\nmessage {n}\r\n".encode()
                        replies = await clients[n % 2].send_message("a@x", ["b@x"], body)
                        assert [r.code for r in replies] == [250, 250, 354, 250]
                    for client in clients:
                        await client.quit()
                bodies = sorted(t.message.split(b"\r\n\r\n", 1)[1] for t in up.transactions)
                assert bodies == sorted(f"message {n}\r\n".encode() for n in range(20))
                assert len(filter_pids(tmp_path)) == 20
                # Both workers served, each id names the worker (its pid) that logged it,
                # and no id is used twice.
                accepted = ACCEPTED_RE.findall(proxy.log())
                ids = [conn_id for _pid, conn_id in accepted]
                assert len(ids) >= 2 and len(set(ids)) == len(ids)
                assert all(int(conn_id[8:14], 16) == int(pid) for pid, conn_id in accepted)
                assert {int(conn_id[8:14], 16) for conn_id in ids} == set(pids)

                started = trio.current_time()
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
                assert trio.current_time() - started < 5
            log = proxy.log()
            assert "received SIGTERM: stopping 2 workers" in log
            assert log.count("shut down\n") == 2
            assert not any(alive(pid) for pid in pids + filter_pids(tmp_path))
            assert not pidfile.exists()


async def test_a_full_worker_leaves_new_clients_to_one_with_room(tmp_path: Path) -> None:
    # Each worker may hold one session. While one is held, the kernel must hand every new
    # client to the other worker: the full one does not accept (it used to, and answer
    # "421 busy" while the other had room, half the time).
    with trio.fail_after(60):
        async with FakeUpstream() as up:
            config, port = setup(tmp_path, up, "Workers: 2\nMaxConnections: 2\n")
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving ", count=2)
                async with open_client("127.0.0.1", port) as held:
                    assert (await held.greeting()).code == 220
                    for n in range(8):
                        async with open_client("127.0.0.1", port) as client:
                            assert (await client.greeting()).code == 220
                            body = f"Subject: m{n}\r\n\r\nmessage {n}\r\n".encode()
                            replies = await client.send_message("a@x", ["b@x"], body)
                            assert replies[-1].code == 250
                            await client.quit()
                            await client.read_eof()
                    await held.quit()
                assert "sent busy response" not in proxy.log()
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
    assert len(up.transactions) == 8


async def test_clients_waiting_while_every_worker_is_full_are_refused_together(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with FakeUpstream() as up:
            config, port = setup(tmp_path, up, "Workers: 2\nMaxConnections: 2\n")
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving ", count=2)
                async with AsyncExitStack() as stack:
                    await one_session_per_worker(stack, port, 2)
                    waiting = 8
                    replies: list[bytes] = []

                    async def refused() -> None:
                        async with open_client("127.0.0.1", port) as client:
                            replies.append((await client.greeting()).to_bytes())

                    started = trio.current_time()
                    async with trio.open_nursery() as nursery:
                        for _ in range(waiting):
                            nursery.start_soon(refused)
                    elapsed = trio.current_time() - started
                    assert replies == [BUSY_REPLY] * waiting
                    # Once a client has waited HANDOFF_DELAY, every waiting one is refused
                    # at once, not one per HANDOFF_DELAY and worker (4 x HANDOFF_DELAY).
                    assert HANDOFF_DELAY <= elapsed < 3 * HANDOFF_DELAY
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0


async def test_sighup_reaches_both_workers(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            base = "Workers: 2\nMaxConnections: 2\n"
            config, port = setup(tmp_path, up, base + "Header: X-Gen: one\n")
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving ", count=2)

                async def deliver_on_both() -> list[bytes]:
                    """The added header of one message through each worker."""
                    before = len(up.transactions)
                    async with AsyncExitStack() as stack:
                        for client in await one_session_per_worker(stack, port, 2):
                            replies = await client.send_message("a@x", ["b@x"], MESSAGE)
                            assert replies[-1].code == 250
                            await client.quit()
                            await client.read_eof()
                    return [
                        t.message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[-1]
                        for t in up.transactions[before:]
                    ]

                assert await deliver_on_both() == [b"X-Gen: one"] * 2
                config.write_text(config.read_text().replace("one", "two"))
                proxy.signal(signal.SIGHUP)
                await proxy.wait_log("SIGHUP: reloaded", count=2)
                assert await deliver_on_both() == [b"X-Gen: two"] * 2
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0


async def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            config, port = setup(tmp_path, up, "Workers: 2\nMaxConnections: 2\n")
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving ", count=2)
                first = dict(workers_started(proxy.log()))
                victim = first[1]
                kill_quietly(victim, signal.SIGKILL)
                await proxy.wait_log(f"(pid {victim}) was killed by signal SIGKILL")
                await proxy.wait_log(" serving ", count=3)
                replacement = workers_started(proxy.log())[-1]
                assert replacement[0] == 1 and replacement[1] not in first.values()
                assert alive(replacement[1]) and alive(first[2])

                async with AsyncExitStack() as stack:
                    for client in await one_session_per_worker(stack, port, 2):
                        replies = await client.send_message("a@x", ["b@x"], MESSAGE)
                        assert replies[-1].code == 250
                assert len(up.transactions) == 2
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
            assert not alive(replacement[1]) and not alive(first[2])


async def test_workers_leave_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            config, port = setup(tmp_path, up, "Workers: 2\n")
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving ", count=2)
                pids = [pid for _k, pid in workers_started(proxy.log())]
                try:
                    async with open_client("127.0.0.1", port) as idle:
                        assert (await idle.command("EHLO idle.example")).code == 250
                        proxy.proc.kill()
                        # The worker drains as on SIGTERM: the idle client is told.
                        assert (await idle.read_reply()).code == 421
                    started = trio.current_time()
                    await wait_for(lambda: not any(alive(pid) for pid in pids))
                    assert trio.current_time() - started < 5
                finally:
                    for pid in pids:
                        if alive(pid):
                            kill_quietly(pid, signal.SIGKILL)


async def test_one_worker_keeps_the_single_process(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            config, port = setup(tmp_path, up, "Workers: 1\n")
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.started()
                async with open_client("127.0.0.1", port) as client:
                    assert (await client.send_message("a@x", ["b@x"], MESSAGE))[-1].code == 250
                children = [
                    entry.name
                    for entry in Path("/proc").iterdir()
                    if entry.name.isdigit()
                    and (stat := proc_stat(int(entry.name))) is not None
                    and int(stat[1]) == proxy.proc.pid
                ]
                assert children == []
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
            assert "worker" not in proxy.log()
            # The process itself serves: its first id carries its own pid.
            [(pid, conn_id)] = ACCEPTED_RE.findall(proxy.log())
            assert int(pid) == proxy.proc.pid == int(conn_id[8:14], 16)
            assert conn_id.endswith("0001")


@contextlib.contextmanager
def cpu_affinity(cpus: list[int]) -> Iterator[None]:
    """Run what this thread starts meanwhile on `cpus` only (children inherit it)."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


@pytest.mark.parametrize("cores", [1, 2])
async def test_by_default_one_worker_per_available_core(tmp_path: Path, cores: int) -> None:
    available = sorted(os.sched_getaffinity(0))
    if len(available) < cores:
        pytest.skip(f"needs {cores} available CPU cores")
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            config, port = setup(tmp_path, up, "")  # no Workers line: auto
            with contextlib.ExitStack() as stack:
                with cpu_affinity(available[:cores]):
                    proxy = stack.enter_context(proxy_process(config, tmp_path / "proxy.log"))
                if cores == 1:
                    await proxy.started()
                else:
                    await proxy.wait_log(" serving ", count=cores)
                async with open_client("127.0.0.1", port) as client:
                    assert (await client.send_message("a@x", ["b@x"], MESSAGE))[-1].code == 250
                assert len(proxy.pids()) == (1 if cores == 1 else 1 + cores)
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
            log = proxy.log()
            if cores == 1:  # serves directly, as with Workers: 1
                assert "worker" not in log
            else:
                assert f"starting {cores} workers" in log
                assert sorted(k for k, _pid in workers_started(log)) == list(range(1, cores + 1))


async def test_the_supervisor_removes_the_unix_socket_file(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            path = tmp_path / "proxsmtpd.sock"
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: {path}\nOutAddress: {up.address}\nWorkers: 2\n",
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving ", count=2)
                async with open_client(path) as client:
                    assert (await client.send_message("a@x", ["b@x"], MESSAGE))[-1].code == 250
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
            assert not path.exists()


# -- in-process and small-process checks ------------------------------------------------


@pytest.mark.parametrize(
    ("total", "count"),
    [(t, c) for t in (1, 2, 3, 7, 64, 10239) for c in (1, 2, 3, 5, 64) if c <= t],
)
def test_worker_shares_add_up_and_differ_by_at_most_one(total: int, count: int) -> None:
    shares = [worker_share(total, k, count) for k in range(count)]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1 and min(shares) >= 1
    assert shares == sorted(shares, reverse=True)  # the first workers get the remainder


def test_connection_ids_never_repeat_across_servers_and_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = parse_config("OutAddress: 127.0.0.1:2525\nMaxConnections: 5\n")
    servers = [Server(config, None, k, 3) for k in range(3)]
    ids = [next(server.ids) for _ in range(4) for server in servers]
    # Servers in one process share its counter: no id twice, each with this pid.
    assert len(set(ids)) == 12 and all(re.fullmatch(ID_PATTERN, i) for i in ids)
    assert {i[8:14] for i in ids} == {f"{os.getpid() & 0xFFFFFF:06X}"}
    assert [server.max_connections for server in servers] == [2, 2, 1]
    assert Server(config).max_connections == 5
    # A forked worker (another pid) starts its own ids, with its pid in them.
    monkeypatch.setattr(os, "getpid", lambda: 0x4242)
    worker = Server(config, None, 1, 3)
    worker_ids = [next(worker.ids) for _ in range(3)]
    assert {i[8:14] for i in worker_ids} == {"004242"} and not set(worker_ids) & set(ids)
    assert process_connection_ids() is worker.ids


async def test_reload_keeps_the_running_worker_count(caplog: pytest.LogCaptureFixture) -> None:
    old = parse_config("OutAddress: 127.0.0.1:2525\nWorkers: 2\nMaxConnections: 4\n")
    new: list[Config] = [attrs.evolve(old, workers=3, max_connections=6, timeout=9.0)]
    server = Server(old, lambda: new[0], 1, 2)
    with trio.fail_after(10):
        await server.reload()
    assert (server.config.workers, server.config.timeout, server.max_connections) == (2, 9.0, 3)
    assert "Workers changed from 2 to 3: a restart is needed" in caplog.text
    # One worker and MaxConnections 1 in the file: a share of 0 would refuse every client.
    new[0] = attrs.evolve(old, workers=1, max_connections=1, timeout=5.0)
    with trio.fail_after(10):
        await server.reload()
    assert (server.config.timeout, server.max_connections) == (9.0, 3)
    assert "config not reloaded" in caplog.text


def test_describe_exit() -> None:
    assert describe_exit(3 << 8) == "exited with status 3"
    assert describe_exit(signal.SIGKILL) == "was killed by signal SIGKILL"


CRASHING = """\
import signal, sys
from trio_proxsmtp.common.log import setup_logging
from trio_proxsmtp.daemon.workers import Supervisor
setup_logging(4)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
sys.exit(Supervisor(2, lambda k: 3, restart_interval=0.25).run())
"""


async def test_a_crashing_worker_is_restarted_at_a_bounded_rate(tmp_path: Path) -> None:
    with trio.fail_after(20):
        out = tmp_path / "out.log"
        with background([sys.executable, "-c", CRASHING], out) as proc:
            await wait_for(lambda: "exited with status 3: starting a new one" in out.read_text())
            started = trio.current_time()
            before = out.read_text().count("worker 1 of 2 started")
            await trio.sleep(1.0)
            during = out.read_text().count("worker 1 of 2 started") - before
            elapsed = trio.current_time() - started
            proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: proc.poll() is not None)
            assert proc.returncode == 0
        # One start per 0.25 s at most (plus one at the edge), but it does keep trying.
        assert 2 <= during <= elapsed / 0.25 + 1
        assert "all workers stopped" in out.read_text()


def test_applicable_reload_keeps_what_needs_a_restart() -> None:
    running = parse_config("OutAddress: 127.0.0.1:2525\nListen: 127.0.0.1:2600\nWorkers: 2\n")
    new = parse_config(
        "OutAddress: 127.0.0.1:2525\nListen: 127.0.0.1:2700\nWorkers: 3\nTimeOut: 9\n"
    )
    config, problems = applicable_reload(running, new, 2)
    assert config is not None
    assert (config.listen, config.workers, config.timeout) == (running.listen, 2, 9.0)
    assert len(problems) == 2 and all("a restart is needed" in p for p in problems)
    # A file that leaves a running worker no connection at all is not applied.
    tight = parse_config("OutAddress: 127.0.0.1:2525\nListen: 127.0.0.1:2600\nMaxConnections: 1\n")
    assert applicable_reload(running, tight, 2)[0] is None
    assert applicable_reload(running, running, 2) == (running, [])


async def test_a_stopping_worker_closes_the_shared_listener_for_every_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two workers of one listener (its descriptor duplicated, as fork does): once one stops,
    new clients are refused although the other still holds its copy, and the other's accept
    loop waits quietly for its own stop."""
    caplog.set_level("DEBUG", logger="trio_proxsmtp")
    config = parse_config("OutAddress: 127.0.0.1:2525\nWorkers: 2\n")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    first, second = Server(config, None, 0, 2), Server(config, None, 1, 2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(first.serve, [sock])
            await nursery.start(second.serve, [sock.dup()])
            (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()  # accepted
            first.stop()
            await wait_for(lambda: "shut down\n" in caplog.text)
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            await wait_for(lambda: "shut down by another worker" in caplog.text)
            assert not second.draining  # its sessions go on until its own stop
            second.stop()
    assert caplog.text.count("shut down\n") == 2
