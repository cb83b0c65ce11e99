"""Attack: the log stops taking records (issue 21, item 1; docs/behaviour.md §9.4).

A syslog daemon that stops reading (its Unix datagram socket queues about ten records) or a
``-d`` stderr pipe nobody reads (a stuck supervisord) made the log handler wait in
``send()``/``write()`` in every worker's event loop and in the supervisor: the third
session hung and SIGTERM did nothing. Now a record that cannot go at once is dropped and
counted, and the log says so when it takes records again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from ops_support import ENV, ROOT, free_port, wait_for, write_config

from trio_proxsmtp.common.log import LOGGER_NAME, setup_logging
from trio_proxsmtp.common.log_handlers import set_drop_counter
from trio_proxsmtp.daemon.prometheus import PrometheusMetrics
from trio_proxsmtp.testing import FakeUpstream, open_client

log = logging.getLogger(LOGGER_NAME)
MESSAGE = b"Subject: stalled log\r\n\r\nbody\r\n"
SESSIONS = 8  # the socket's queue (ten records) is full after two or three
BOUND = 5.0  # seconds SIGTERM may take to end an idle proxy
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
STDERR_LINE = re.compile(rf"{STAMP} proxsmtpd\[(\d+)\]: (.*)")


def bounded(action: Callable[[], None], unblock: Callable[[], None]) -> None:
    """Run `action` in a thread; fail if it has not returned within a few seconds (it
    blocked in the log handler), after `unblock` lets a blocked handler go on."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(5)
    blocked = thread.is_alive()
    if blocked:
        unblock()
        thread.join(5)
    assert not blocked, "logging blocked"


def receive_all(sock: socket.socket) -> list[bytes]:
    """The datagrams queued on `sock` now."""
    sock.setblocking(False)
    records = []
    with contextlib.suppress(BlockingIOError):
        while True:
            records.append(sock.recv(65536))
    return records


@pytest.fixture(autouse=True)
def logging_as_it_was() -> Iterator[None]:
    """Leave the package's logger as the test found it: its level (later tests read INFO
    records with caplog), and no handler of ours on the test's sockets or pipes."""
    logger = logging.getLogger(LOGGER_NAME)
    level, before = logger.level, list(logger.handlers)
    try:
        yield
    finally:
        set_drop_counter(None)
        for handler in list(logger.handlers):
            if handler not in before:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(level)


@pytest.fixture
def drops() -> Iterator[list[int]]:
    """The drop counter's calls (as the metrics get them)."""
    counted: list[int] = []
    set_drop_counter(counted.append)
    yield counted


# -- the handlers ------------------------------------------------------------------------


def test_a_full_syslog_socket_drops_counts_and_says_so_when_it_recovers(
    tmp_path: Path, drops: list[int]
) -> None:
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        setup_logging(None, syslog_address=path)
        bounded(lambda: [log.info("line %d", n) for n in range(50)], syslog.close)
        queued = receive_all(syslog)
        ident = f"proxsmtpd[{os.getpid()}]: ".encode()
        assert 0 < len(queued) < 50
        assert queued == [b"<22>" + ident + b"line %d\0" % n for n in range(len(queued))]
        assert sum(drops) == 50 - len(queued)
        log.info("after")  # the socket has room again
        assert receive_all(syslog) == [
            b"<20>"
            + ident
            + b"dropped %d log lines: the syslog socket %s was full\0"
            % (50 - len(queued), path.encode()),
            b"<22>" + ident + b"after\0",
        ]
        log.info("again")
        assert receive_all(syslog) == [b"<22>" + ident + b"again\0"]  # said once


def text_of(line: str) -> str:
    """The message of a ``-d`` line, which must be whole: timestamp, ident, text."""
    match = STDERR_LINE.fullmatch(line)
    assert match is not None, line
    return match[2]


def test_a_full_stderr_pipe_drops_counts_and_says_so_when_it_recovers(
    monkeypatch: pytest.MonkeyPatch, drops: list[int]
) -> None:
    read, write = os.pipe()
    fcntl.fcntl(read, fcntl.F_SETPIPE_SZ, 4096)
    stream = open(write, "w")  # noqa: SIM115 - closed below

    def unblock() -> None:
        os.close(read)  # a writer blocked on the full pipe gets EPIPE

    try:
        monkeypatch.setattr(sys, "stderr", stream)
        setup_logging(3)
        bounded(lambda: [log.info("%04d %s", n, "x" * 200) for n in range(100)], unblock)
        # The flag is on the proxy's own description of the pipe, not on the shared one.
        assert os.get_blocking(write)
        os.set_blocking(read, False)
        texts = [text_of(line) for line in os.read(read, 1 << 20).decode().splitlines()]
        kept = len(texts)
        assert 0 < kept < 100
        assert texts == [f"{n:04d} {'x' * 200}" for n in range(kept)]
        assert sum(drops) == 100 - kept
        log.info("after")
        texts = [text_of(line) for line in os.read(read, 4096).decode().splitlines()]
        assert texts == [f"dropped {100 - kept} log lines: stderr was full", "after"]
    finally:
        monkeypatch.undo()
        for close in (stream.close, lambda: os.close(read)):
            with contextlib.suppress(OSError):
                close()


def test_dropped_lines_are_counted_in_the_metrics(tmp_path: Path) -> None:
    metrics = PrometheusMetrics()
    set_drop_counter(metrics.log_lines_dropped)
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        setup_logging(None, syslog_address=path)
        bounded(lambda: [log.warning("line %d", n) for n in range(40)], syslog.close)
        dropped = 40 - len(receive_all(syslog))
    body = metrics.exposition()[0].decode()
    assert f"proxsmtpd_log_lines_dropped_total {float(dropped)}" in body.splitlines()
    assert dropped > 0


# -- the real daemon ---------------------------------------------------------------------


def processes_with(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line mentions `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def killed_at_the_end(marker: str, ours: list[int]) -> Iterator[None]:
    """SIGKILL whatever is left of the proxy (its config path is `marker`) and reap it, and
    the pids in `ours`: the hostile tests make this process a subreaper, so the detached
    daemon (and, were it killed first, its workers) are our children."""
    try:
        yield
    finally:
        left = processes_with(marker)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in {*left, *ours}:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def config_for(tmp_path: Path, up: FakeUpstream) -> tuple[Path, int]:
    port = free_port()
    config = write_config(
        tmp_path / "proxsmtpd.conf",
        f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\nWorkers: 2\n"
        f"TempDirectory: {tmp_path}\n",
    )
    return config, port


async def sessions(port: int) -> None:
    """SESSIONS clients, one after the other, each delivering one message."""
    for _ in range(SESSIONS):
        async with open_client("127.0.0.1", port) as client:
            replies = await client.send_message("a@x", ["b@x"], MESSAGE)
            assert [r.code for r in replies] == [250, 250, 354, 250]
            assert (await client.quit()).code == 221


async def test_a_stalled_syslog_stops_neither_sessions_nor_sigterm(tmp_path: Path) -> None:
    syslog_path = tmp_path / "syslog.sock"
    with (
        trio.fail_after(60),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog,
    ):
        syslog.bind(str(syslog_path))  # and never read, until the end
        async with FakeUpstream() as up:
            config, port = config_for(tmp_path, up)
            pidfile = tmp_path / "proxsmtpd.pid"
            ours: list[int] = []
            with killed_at_the_end(str(config), ours):
                started = await trio.run_process(
                    [sys.executable, "-m", "trio_proxsmtp", "-f", str(config), "-p", str(pidfile)],
                    env={**ENV, "PROXSMTPD_SYSLOG_SOCKET": str(syslog_path)},
                    cwd=ROOT,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
                assert started.returncode == 0, started.stderr
                supervisor = int(pidfile.read_text())
                ours.append(supervisor)
                with trio.fail_after(30):
                    await sessions(port)
                assert len(up.transactions) == SESSIONS
                queued = receive_all(syslog)
                assert len(queued) < 3 * SESSIONS  # lines were dropped: it was full
                os.kill(supervisor, signal.SIGTERM)
                since = trio.current_time()
                records: list[bytes] = []

                def stopped() -> bool:
                    records.extend(receive_all(syslog))
                    return not processes_with(str(config))

                with trio.fail_after(BOUND):
                    await wait_for(stopped)
                assert trio.current_time() - since < BOUND
    # (The notice may come before the SIGTERM: each connection's disconnect line follows
    # its last reply, so a worker may log again after `queued` was read.)
    texts = [record.decode(errors="replace") for record in queued + records]
    assert any(f"proxsmtpd[{supervisor}]: received SIGTERM: stopping 2 workers" in t for t in texts)
    full = f"the syslog socket {syslog_path} was full"
    assert any(re.search(rf"dropped \d+ log lines: {re.escape(full)}", t) for t in texts)
    assert not pidfile.exists()


async def test_a_full_stderr_pipe_stops_neither_sessions_nor_sigterm(tmp_path: Path) -> None:
    """-d 4 (the protocol trace) into a one-page pipe, full from the start, not read."""
    read, write = os.pipe()
    fcntl.fcntl(read, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"junk\n")  # five bytes go in whole or not at all
    os.set_blocking(write, True)
    output = bytearray()
    try:
        with trio.fail_after(60):
            async with FakeUpstream() as up:
                config, port = config_for(tmp_path, up)
                proxy = subprocess.Popen(
                    [sys.executable, "-m", "trio_proxsmtp", "-d", "4", "-f", str(config)],
                    env=ENV,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=write,
                    stderr=write,
                )
                try:
                    with trio.fail_after(30):
                        await wait_until_serving(port)
                        await sessions(port)
                    assert len(up.transactions) == SESSIONS
                    assert os.get_blocking(write)  # the shared description is left alone
                    os.close(write)
                    write = -1
                    # Room for all that follows: the first line after it says what was lost.
                    fcntl.fcntl(read, fcntl.F_SETPIPE_SZ, 1 << 20)
                    os.set_blocking(read, False)
                    proxy.send_signal(signal.SIGTERM)
                    since = trio.current_time()

                    def stopped() -> bool:
                        with contextlib.suppress(BlockingIOError):
                            while chunk := os.read(read, 65536):
                                output.extend(chunk)
                        return proxy.poll() is not None

                    with trio.fail_after(BOUND):
                        await wait_for(stopped)
                    assert trio.current_time() - since < BOUND
                    assert proxy.returncode == 0
                finally:
                    if proxy.poll() is None:
                        proxy.kill()
                    proxy.wait(10)
                    with killed_at_the_end(str(config), []):
                        pass
    finally:
        if write >= 0:
            os.close(write)
        os.close(read)
    lines = [line for line in output.decode(errors="replace").splitlines() if line != "junk"]
    assert lines and all(STDERR_LINE.fullmatch(line) for line in lines), lines  # none cut
    assert any(re.search(r": dropped \d+ log lines: stderr was full$", line) for line in lines)
    assert any(line.endswith(f"proxsmtpd[{proxy.pid}]: all workers stopped") for line in lines)


async def wait_until_serving(port: int) -> None:
    """Poll until a client gets the banner (the log cannot tell: nobody reads it)."""
    while True:
        try:
            async with open_client("127.0.0.1", port) as client:
                if (await client.greeting()).code == 220:
                    await client.quit()
                    return
        except OSError:
            pass
        await trio.sleep(0.05)
