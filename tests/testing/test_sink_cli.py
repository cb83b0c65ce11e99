"""`python -m trio_proxsmtp.testing sink` as a real subprocess, fed by the stdlib smtplib."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import trio_proxsmtp

MESSAGE = b"Subject: hello\r\n\r\nfrom smtplib\r\n"
REPO = Path(trio_proxsmtp.__file__).resolve().parent.parent


def send_with_smtplib(port: int) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        refused = smtp.sendmail(
            "s@example.org",
            ["r@example.org", "reject@example.org"],
            MESSAGE,
        )
    return refused


async def read_until(stream: trio.abc.ReceiveStream, buffer: bytearray, marker: bytes) -> None:
    while marker not in buffer:
        chunk = await stream.receive_some()
        assert chunk, f"EOF before {marker!r}; got {bytes(buffer)!r}"
        buffer += chunk


@pytest.mark.parametrize("quiet", [False, True])
async def test_sink_prints_messages_and_exits_0_on_sigterm(quiet: bool) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "trio_proxsmtp.testing",
        "sink",
        "--listen",
        "127.0.0.1:0",
        "--reject",
    ]
    command += ["--quiet"] if quiet else []
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        try:
            assert process.stdout is not None and process.stderr is not None
            err = bytearray()
            await read_until(process.stderr, err, b"\n")
            assert err.startswith(b"sink listening on 127.0.0.1:")
            port = int(err.split(b":")[1])

            refused = await trio.to_thread.run_sync(send_with_smtplib, port)
            assert list(refused) == ["reject@example.org"]

            out = bytearray()
            await read_until(process.stdout, out, b"\n" if quiet else b"from smtplib\r\n")
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                for pipe in (process.stdout, process.stderr):
                    if pipe is not None:
                        await pipe.aclose()
    head = (
        f"=== message 1: from=<s@example.org> to=<r@example.org> ({len(MESSAGE)} bytes)"
        " peer=127.0.0.1\n"
    )
    assert out == head.encode() + (b"" if quiet else MESSAGE)


def test_bad_listen_value_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_proxsmtp.testing", "sink", "--listen", "nope:x"],
        capture_output=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and b"invalid listen address" in result.stderr


async def test_each_message_gets_its_own_queue_id_even_unrecorded() -> None:
    """The sink keeps nothing (record=False), yet each 250 names another message."""
    from trio_proxsmtp.testing import FakeUpstream, open_client

    with trio.fail_after(10):
        async with FakeUpstream(record=False) as up:
            ids = []
            for _ in range(2):
                async with open_client("127.0.0.1", up.port) as client:
                    await client.greeting()
                    for _ in range(2):
                        replies = await client.send_message("s@x", ["r@x"], MESSAGE)
                        ids.append(replies[-1].lines[-1])
    assert up.transactions == [] and up.accepted == 4
    assert ids == [f"2.0.0 Ok: queued as {n}" for n in (1, 2, 3, 4)]
