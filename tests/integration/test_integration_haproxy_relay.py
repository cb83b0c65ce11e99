"""Two real proxies (`python -m trio_proxsmtp -d 3`) behind a real HAProxy
(contrib/haproxy/haproxy.cfg), with `ProxyProtocol: on`.

The clients connect from 127.0.0.2 and HAProxy from 127.0.0.1, so the real client's address
is told apart from the balancer's: it must reach the upstream in XCLIENT, the filter in
$CLIENT and the summary line, for PROXY v1 and v2.  HAProxy's health checks must make no
summary line and nothing but the session's ordinary lines.  One instance drained with
SIGTERM while mail flows must lose nothing: every 250 a client got is a message the upstream
has, exactly once.
"""

from __future__ import annotations

import collections
import re
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

from trio_proxsmtp.common.log import ID_PATTERN
from trio_proxsmtp.testing import FakeClient, FakeUpstream

pytestmark = pytest.mark.integration

CLIENT_ADDRESS = "127.0.0.2"  # the clients' source: loopback, but not the balancer's
FILTER = "#!/bin/sh\nprintf 'X-Client: %s\\r\\n' \"$CLIENT\"\nexec cat\n"
# HAProxy's check timeout is its interval: a shared, loaded test machine needs more than
# the 200 ms of haproxy_support's default, or an instance may be marked down.
CHECK_INTERVAL = "1s"
LINE_RE = re.compile(rf"^\S+ proxsmtpd\[\d+\]: ({ID_PATTERN}): (.*)$", re.MULTILINE)


@attrs.define
class Instance:
    port: int
    log_path: Path
    process: trio.Process

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sessions(self) -> dict[str, list[str]]:
        """Each connection's log lines (without time, pid and id), by connection id."""
        found: dict[str, list[str]] = collections.defaultdict(list)
        for conn_id, text in LINE_RE.findall(self.log()):
            found[conn_id].append(text)
        return found

    def summaries(self) -> list[str]:
        return [line for lines in self.sessions().values() for line in lines if "client=" in line]


@asynccontextmanager
async def proxy_instance(workdir: Path, name: str, up: FakeUpstream) -> AsyncIterator[Instance]:
    workdir.mkdir()
    script = workdir / "filter.sh"
    script.write_text(FILTER)
    script.chmod(0o755)
    port = free_port()
    config = workdir / "proxsmtpd.conf"
    config.write_text(
        f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\nTempDirectory: {workdir}\n"
        f"FilterCommand: {script}\nXClient: on\nProxyProtocol: on\n"
        "ProxyProtocolFrom: 127.0.0.1\nShutdownTimeout: 20\n"
    )
    argv = [sys.executable, "-m", "trio_proxsmtp", "-d", "3", "-f", str(config)]
    log = workdir / f"{name}.log"
    async with spawn(argv, log=log, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}) as process:
        await wait_listening(port, process)
        yield Instance(port, log, process)


@asynccontextmanager
async def client_from(address: str, port: int) -> AsyncIterator[FakeClient]:
    """A FakeClient connected to 127.0.0.1:port from `address`."""
    sock = trio.socket.socket()
    try:
        await sock.bind((address, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    client = FakeClient(trio.SocketStream(sock))
    try:
        yield client
    finally:
        await trio.aclose_forcefully(client.stream)


async def wait_checked(instances: list[Instance], checks: int = 2) -> None:
    """Until HAProxy has checked every instance (it marks them up after `rise` checks)."""
    while not all(
        sum("accepted connection from: 127.0.0.1" in line for line in lines) >= checks
        for lines in [
            [line for s in instance.sessions().values() for line in s] for instance in instances
        ]
    ):
        await trio.sleep(0.05)


def health_check_sessions(instance: Instance) -> list[list[str]]:
    """The sessions of HAProxy's checks: from the balancer's own address."""
    return [
        lines
        for lines in instance.sessions().values()
        if lines and lines[0] == "accepted connection from: 127.0.0.1"
    ]


def subject_of(message: bytes) -> str:
    found = re.search(rb"^Subject: (\S+)\r$", message, re.MULTILINE)
    assert found is not None, message
    return found.group(1).decode()


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
async def test_the_real_client_reaches_upstream_and_filter_through_haproxy(
    tmp_path: Path, send_proxy: str
) -> None:
    with trio.fail_after(60):
        async with (
            FakeUpstream() as up,
            proxy_instance(tmp_path / "one", "one", up) as one,
            proxy_instance(tmp_path / "two", "two", up) as two,
            run_haproxy(
                tmp_path,
                [one.port, two.port],
                send_proxy=send_proxy,
                check_interval=CHECK_INTERVAL,
            ) as front,
        ):
            await wait_checked([one, two])
            # Two clients at once: leastconn gives each instance one.
            async with (
                client_from(CLIENT_ADDRESS, front) as first,
                client_from(CLIENT_ADDRESS, front) as second,
            ):
                for n in range(6):
                    client = (first, second)[n % 2]
                    body = f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode()
                    replies = await client.send_message("a@x", ["b@x"], body)
                    assert replies[-1].code == 250, replies
                for client in (first, second):
                    assert (await client.quit()).code == 221
            await up.wait_until(lambda: len(up.transactions) == 6)
            checks = health_check_sessions(one) + health_check_sessions(two)
            one_summaries, two_summaries = one.summaries(), two.summaries()
    assert sorted(subject_of(t.message) for t in up.transactions) == [f"m{n}" for n in range(6)]
    for transaction in up.transactions:
        assert transaction.message.startswith(f"X-Client: {CLIENT_ADDRESS}\r\n".encode())
    xclients = [c for c in up.commands if c.startswith(b"XCLIENT ")]
    assert xclients and all(f"ADDR={CLIENT_ADDRESS} ".encode() in c for c in xclients)
    # Both instances delivered, each summary names the real client.
    assert len(one_summaries) == len(two_summaries) == 3
    for line in one_summaries + two_summaries:
        assert line.startswith(
            f"client={CLIENT_ADDRESS}, via=127.0.0.1, from=<a@x>, to=<b@x>, status=FILTERED"
        )
    # Health checks: ordinary sessions, no summary, nothing but arrival and departure.
    assert checks
    for lines in checks:
        assert not [line for line in lines if "client=" in line]
        ends = [line for line in lines[1:] if not line.startswith("disconnect from 127.0.0.1 ")]
        assert set(ends) <= {"client disconnected: closed the connection"}, lines


async def send_until(
    front: int, stop: trio.Event, acked: list[str], failed: list[str], prefix: str
) -> None:
    """One message per connection until `stop`; record which got 250 and which did not."""
    n = 0
    while not stop.is_set():
        subject = f"{prefix}-{n}"
        n += 1
        try:
            async with client_from(CLIENT_ADDRESS, front) as client:
                body = f"Subject: {subject}\r\n\r\nbody\r\n".encode()
                replies = await client.send_message("a@x", ["b@x"], body)
                if replies[-1].code == 250 and len(replies) == 4:
                    acked.append(subject)
                else:
                    failed.append(subject)
                await client.quit()
        except (EOFError, OSError, trio.BrokenResourceError):
            failed.append(subject)


async def test_draining_one_instance_loses_no_message(tmp_path: Path) -> None:
    acked: list[str] = []
    failed: list[str] = []
    with trio.fail_after(90):
        async with (
            FakeUpstream() as up,
            proxy_instance(tmp_path / "one", "one", up) as one,
            proxy_instance(tmp_path / "two", "two", up) as two,
            run_haproxy(tmp_path, [one.port, two.port], check_interval=CHECK_INTERVAL) as front,
        ):
            await wait_checked([one, two])
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                for k in range(4):
                    nursery.start_soon(send_until, front, stop, acked, failed, f"c{k}")
                await up.wait_until(lambda: len(up.transactions) >= 20)
                assert one.summaries(), "the first instance took no mail before the drain"
                one.process.send_signal(signal.SIGTERM)
                with trio.fail_after(30):
                    await one.process.wait()
                before = len(acked)
                # Mail keeps flowing through the other instance.
                await up.wait_until(lambda: len(up.transactions) >= before + 20)
                stop.set()
            drained_log = one.log()
    assert one.process.returncode == 0, drained_log
    assert "shut down" in drained_log
    delivered = collections.Counter(subject_of(t.message) for t in up.transactions)
    assert [s for s, count in delivered.items() if count > 1] == []  # exactly once
    assert set(acked) <= set(delivered)  # every 250 is a message the upstream has
    assert len(acked) >= 40
