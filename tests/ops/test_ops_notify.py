"""systemd readiness (sd_notify) on the real process: a fake $NOTIFY_SOCKET in tmp_path.

The socket passes credentials (SO_PASSCRED), so each datagram says which process sent it:
only the main process (the supervisor with Workers) may speak for the service.
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from ops_support import free_port, proxy_process, write_config

from trio_proxsmtp.daemon import notify
from trio_proxsmtp.testing import FakeUpstream, open_client

UCRED = struct.Struct("iII")  # pid, uid, gid
MESSAGE = b"Subject: notify\r\n\r\nbody\r\n"
# A filter that shows whether it inherited NOTIFY_SOCKET.
SHOW_NOTIFY = "FilterCommand: printf 'X-Notify: %s\\r\\n' \"${NOTIFY_SOCKET-unset}\"; cat\n"


class Notifications:
    """The receiving end of NOTIFY_SOCKET: (sender pid, {KEY: VALUE}) per datagram."""

    def __init__(self, sock: trio.socket.SocketType, path: Path) -> None:
        self.sock = sock
        self.path = path

    async def next(self) -> tuple[int, dict[str, str]]:
        data, ancdata, _flags, _addr = await self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        pid = 0
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(payload[: UCRED.size])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        return pid, fields

    async def expect(self, key: str) -> tuple[int, dict[str, str]]:
        """The next datagram, which must carry `key`."""
        pid, fields = await self.next()
        assert key in fields, fields
        return pid, fields

    async def nothing_more(self, wait: float) -> None:
        with trio.move_on_after(wait):
            pid, fields = await self.next()
            pytest.fail(f"unexpected notification from {pid}: {fields}")


@asynccontextmanager
async def notify_socket(tmp_path: Path) -> AsyncIterator[Notifications]:
    path = tmp_path / "notify"
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        await sock.bind(str(path))
        yield Notifications(sock, path)


def setup(tmp_path: Path, up: FakeUpstream, extra: str = "") -> tuple[Path, int]:
    port = free_port()
    config = write_config(
        tmp_path / "proxsmtpd.conf",
        f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n{SHOW_NOTIFY}{extra}",
    )
    return config, port


async def deliver(port: int) -> None:
    async with open_client("127.0.0.1", port) as client:
        replies = await client.send_message("a@x", ["b@x"], MESSAGE)
        assert replies[-1].code == 250
        await client.quit()


async def test_ready_reloading_and_stopping_come_from_the_proxy(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up, notify_socket(tmp_path) as notes:
            # The STATUS texts of one process; with workers the supervisor's say how many
            # (test_with_workers_only_the_supervisor_notifies).
            config, port = setup(tmp_path, up, "Workers: 1\n")
            env = {"NOTIFY_SOCKET": str(notes.path)}
            with proxy_process(config, tmp_path / "proxy.log", env=env) as proxy:
                pid, fields = await notes.expect("READY")
                assert pid == proxy.proc.pid and fields["MAINPID"] == str(pid)
                assert fields["STATUS"] == f"listening on 127.0.0.1:{port}"

                # Ready means accepting; the filter did not inherit the socket.
                await deliver(port)
                assert b"X-Notify: unset\r\n" in up.transactions[-1].message

                proxy.signal(signal.SIGHUP)
                pid, fields = await notes.expect("RELOADING")
                assert pid == proxy.proc.pid and int(fields["MONOTONIC_USEC"]) > 0
                _pid, fields = await notes.expect("READY")
                assert fields["STATUS"] == f"reloaded {config}"

                write_config(config, config.read_text() + "MaxConnections: lots\n")
                proxy.signal(signal.SIGHUP)
                await notes.expect("RELOADING")
                _pid, fields = await notes.expect("READY")
                assert fields["STATUS"] == notify.NOT_RELOADED

                proxy.signal(signal.SIGTERM)
                pid, _fields = await notes.expect("STOPPING")
                assert pid == proxy.proc.pid
                assert await proxy.wait_exit() == 0


async def test_with_workers_only_the_supervisor_notifies(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up, notify_socket(tmp_path) as notes:
            config, port = setup(tmp_path, up, "Workers: 2\n")
            env = {"NOTIFY_SOCKET": str(notes.path)}
            with proxy_process(config, tmp_path / "proxy.log", env=env) as proxy:
                pid, fields = await notes.expect("READY")
                assert pid == proxy.proc.pid
                assert fields["STATUS"] == "2 workers listening on 127.0.0.1:" + str(port)
                await proxy.wait_log(" serving ", count=2)  # both workers serve
                await deliver(port)
                assert b"X-Notify: unset\r\n" in up.transactions[-1].message

                proxy.signal(signal.SIGHUP)
                pid, _fields = await notes.expect("RELOADING")
                assert pid == proxy.proc.pid
                pid, _fields = await notes.expect("READY")
                assert pid == proxy.proc.pid
                await proxy.wait_log("SIGHUP: reloaded", count=2)  # the workers, silently
                await notes.nothing_more(0.3)

                proxy.signal(signal.SIGTERM)
                pid, _fields = await notes.expect("STOPPING")
                assert pid == proxy.proc.pid
                assert await proxy.wait_exit() == 0
                await notes.nothing_more(0.1)


# -- the module alone -------------------------------------------------------------------


@pytest.fixture
def no_socket() -> Iterator[None]:
    yield
    notify.forget()


@pytest.mark.usefixtures("no_socket")
def test_without_the_variable_nothing_is_sent() -> None:
    environ: dict[str, str] = {"PATH": "/bin"}
    assert notify.take_socket(environ) is None
    assert notify.ready("x") is False


@pytest.mark.usefixtures("no_socket")
def test_take_socket_removes_the_variable_and_abstract_names_work() -> None:
    name = f"@trio-proxsmtp-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name[1:])
        environ = {"NOTIFY_SOCKET": name}
        assert notify.take_socket(environ) == name and "NOTIFY_SOCKET" not in environ
        assert notify.stopping() is True
        assert receiver.recv(4096).startswith(b"STOPPING=1\n")
        notify.forget()
        assert notify.stopping() is False


@pytest.mark.usefixtures("no_socket")
def test_a_missing_socket_is_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notify.take_socket({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notify.status("still here") is False
    assert "couldn't notify the service manager" in caplog.text


@pytest.mark.usefixtures("no_socket")
def test_a_manager_that_stopped_reading_never_blocks_us(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "full"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))  # bound, never read: its queue fills up
        notify.take_socket({"NOTIFY_SOCKET": str(path)})
        results: list[bool] = []
        # In a thread, so that a send that blocks fails this test instead of hanging it.
        sender = threading.Thread(
            target=lambda: results.extend(notify.status("x" * 1000) for _ in range(2000)),
            daemon=True,
        )
        sender.start()
        sender.join(10)
        assert not sender.is_alive(), "a notification blocked"
    assert results[0] is True and results[-1] is False  # dropped, not waited for
    assert "couldn't notify the service manager" in caplog.text
