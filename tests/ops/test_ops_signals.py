"""SIGTERM drain and SIGHUP reload, on the real `python -m trio_proxsmtp -d 3` process.

The upstream (FakeUpstream) and the clients run in the test process; the proxy and its
filters are real processes, so the signals, exit status and pid file are the real ones.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio
from ops_support import (
    free_port,
    group_alive,
    open_files_under,
    proxy_process,
    wait_for,
    write_config,
)

from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.testing import FakeUpstream, open_client

MESSAGE = b"Subject: drain\r\n\r\nbody\r\n"
SHUTTING_DOWN = b"421 4.3.2 Service shutting down\r\n"

# A pipe-mode filter that records its pid (= its process group: filters run in their own
# session), says it started, sleeps, then passes the message through.
FILTER = """\
echo $$ >> "$1/pids"
touch "$1/started"
sleep "$2"
exec cat
"""


def setup(tmp_path: Path, up: FakeUpstream, delay: float, extra: str = "") -> tuple[Path, int]:
    (tmp_path / "filter.sh").write_text(FILTER)
    (tmp_path / "spool").mkdir()
    port = free_port()
    config = write_config(
        tmp_path / "proxsmtpd.conf",
        f"Listen: 127.0.0.1:{port}\n"
        f"OutAddress: {up.address}\n"
        f"TempDirectory: {tmp_path / 'spool'}\n"
        f"FilterCommand: /bin/sh {tmp_path / 'filter.sh'} {tmp_path} {delay}\n"
        f"{extra}",
    )
    return config, port


def headers(message: bytes) -> list[bytes]:
    return message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def filter_pids(tmp_path: Path) -> list[int]:
    path = tmp_path / "pids"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


async def test_sigterm_lets_a_filtered_message_finish_and_tells_idle_clients(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            # Two workers share the listener: it must be closed for both before the first 421.
            config, port = setup(tmp_path, up, delay=1.5, extra="ShutdownTimeout: 20\nWorkers: 2\n")
            pidfile = tmp_path / "proxsmtpd.pid"
            with proxy_process(config, tmp_path / "proxy.log", "-p", str(pidfile)) as proxy:
                await proxy.started()
                assert pidfile.read_text() == f"{proxy.proc.pid}\n"
                busy_replies: list[Reply] = []
                async with (
                    open_client("127.0.0.1", port) as busy,
                    open_client("127.0.0.1", port) as idle,
                    trio.open_nursery() as nursery,
                ):

                    async def send() -> None:
                        busy_replies.extend(await busy.send_message("a@x", ["b@x"], MESSAGE))

                    nursery.start_soon(send)
                    assert (await idle.command("EHLO idle.example")).code == 250
                    await wait_for((tmp_path / "started").exists)
                    started = trio.current_time()
                    proxy.signal(signal.SIGTERM)

                    reply = await idle.read_reply()
                    assert reply.to_bytes() == SHUTTING_DOWN
                    await idle.read_eof()
                    # The listener is closed before the first 421 goes out.
                    with pytest.raises(OSError):
                        await trio.open_tcp_stream("127.0.0.1", port)
                assert [r.code for r in busy_replies] == [250, 250, 354, 250]
                assert len(up.transactions) == 1
                assert up.transactions[0].message.endswith(b"body\r\n")
                assert await proxy.wait_exit() == 0
                # It left as soon as the message was done, not at the end of the grace.
                assert trio.current_time() - started < 10
            assert not pidfile.exists()
            assert list((tmp_path / "spool").iterdir()) == []
            assert "received SIGTERM" in proxy.log()


async def test_sigterm_past_the_grace_period_kills_the_filter(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            config, port = setup(tmp_path, up, delay=60, extra="ShutdownTimeout: 1\n")
            pidfile = tmp_path / "proxsmtpd.pid"
            with proxy_process(config, tmp_path / "proxy.log", "-p", str(pidfile)) as proxy:
                await proxy.started()
                async with open_client("127.0.0.1", port) as client:
                    await client.command("EHLO c.example")
                    await client.command("MAIL FROM:<a@x>")
                    await client.command("RCPT TO:<b@x>")
                    assert (await client.command("DATA")).code == 354
                    # Bigger than what an unnamed spool keeps in memory: it has a file.
                    await client.send(MESSAGE + (b"x" * 998 + b"\r\n") * 300 + b".\r\n")
                    await wait_for((tmp_path / "started").exists)
                    [pgid] = filter_pids(tmp_path)
                    assert group_alive(pgid)
                    # The message's spool (unnamed in pipe mode) is open in the proxy (in
                    # the worker that has the session, under Workers: N).
                    spool = tmp_path / "spool"
                    assert [f for pid in proxy.pids() for f in open_files_under(pid, spool)] != []
                    started = trio.current_time()
                    proxy.signal(signal.SIGTERM)
                    reply = await client.read_reply()
                    assert reply.code == 421
                    await client.read_eof()
                    assert 0.9 < trio.current_time() - started < 8
                assert await proxy.wait_exit() == 0
            assert not group_alive(pgid)
            assert list((tmp_path / "spool").iterdir()) == []
            assert not pidfile.exists()
            assert up.transactions == []
            assert "grace period over" in proxy.log()


async def test_second_sigterm_ends_the_grace_period_at_once(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            config, port = setup(tmp_path, up, delay=60, extra="ShutdownTimeout: 300\n")
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.started()
                async with open_client("127.0.0.1", port) as client:
                    await client.command("EHLO c.example")
                    await client.command("MAIL FROM:<a@x>")
                    await client.command("RCPT TO:<b@x>")
                    await client.command("DATA")
                    await client.send(MESSAGE + b".\r\n")
                    await wait_for((tmp_path / "started").exists)
                    [pgid] = filter_pids(tmp_path)
                    proxy.signal(signal.SIGTERM)
                    await proxy.wait_log("shutting down:")
                    assert not proxy.exited()
                    proxy.signal(signal.SIGINT)
                    assert (await client.read_reply()).code == 421
                assert await proxy.wait_exit() == 0
            assert not group_alive(pgid)
            assert list((tmp_path / "spool").iterdir()) == []
            assert up.transactions == []


async def test_sighup_reloads_header_keeps_serving_on_bad_file_and_reports_listen(
    tmp_path: Path,
) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            port = free_port()
            # One process: each worker reloads on its own, and a client could reach one that
            # has not yet (tests/ops/test_ops_workers.py waits for every worker's reload).
            base = f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\nWorkers: 1\n"
            config = write_config(tmp_path / "proxsmtpd.conf", base + "Header: X-Gen: one\n")
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.started()

                async def deliver() -> bytes:
                    async with open_client("127.0.0.1", port) as client:
                        replies = await client.send_message("a@x", ["b@x"], MESSAGE)
                        assert replies[-1].code == 250
                        await client.quit()
                    message: bytes = up.transactions[-1].message
                    return message

                assert headers(await deliver()) == [b"Subject: drain", b"X-Gen: one"]

                write_config(config, base + "Header: X-Gen: two\n")
                proxy.signal(signal.SIGHUP)
                await proxy.wait_log("SIGHUP: reloaded")
                assert headers(await deliver()) == [b"Subject: drain", b"X-Gen: two"]

                write_config(config, base + "Header: X-Gen: three\nMaxConnections: lots\n")
                proxy.signal(signal.SIGHUP)
                await proxy.wait_log("config not reloaded")
                assert "MaxConnections" in proxy.log()
                assert headers(await deliver()) == [b"Subject: drain", b"X-Gen: two"]

                other = free_port()
                write_config(
                    config,
                    f"Listen: 127.0.0.1:{other}\nOutAddress: {up.address}\nHeader: X-Gen: four\n"
                    "Workers: 1\n",
                )
                proxy.signal(signal.SIGHUP)
                await proxy.wait_log("a restart is needed")
                assert headers(await deliver()) == [
                    b"Subject: drain",
                    b"X-Gen: four",
                ]  # still on `port`
                assert not proxy.exited()
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0


async def test_sigterm_removes_the_unix_listen_socket(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            listen = tmp_path / "proxy.sock"
            config = write_config(
                tmp_path / "proxsmtpd.conf", f"Listen: {listen}\nOutAddress: {up.address}\n"
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.started()
                assert listen.is_socket()
                async with open_client(listen) as client:
                    assert (await client.greeting()).code == 220
                    proxy.signal(signal.SIGTERM)
                    assert (await client.read_reply()).to_bytes() == SHUTTING_DOWN
                assert await proxy.wait_exit() == 0
            assert not listen.exists()


async def test_sighup_turns_starttls_on(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            port = free_port()
            # One process, as above: a worker not yet reloaded would still offer no STARTTLS.
            base = f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\nWorkers: 1\n"
            config = write_config(tmp_path / "proxsmtpd.conf", base)

            async def ehlo_keywords() -> tuple[str, ...]:
                async with open_client("127.0.0.1", port) as client:
                    await client.greeting()
                    lines = (await client.command("EHLO c")).lines
                    await client.quit()
                return lines

            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.started()
                assert "STARTTLS" not in await ehlo_keywords()
                write_config(config, base + f"TLSCertificate: {cert}\nTLSKey: {key}\n")
                proxy.signal(signal.SIGHUP)
                await proxy.wait_log("SIGHUP: reloaded")
                assert "STARTTLS" in await ehlo_keywords()
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
