"""The proxy between real SMTP software: swaks, smtplib, Postfix's smtp-sink and smtp-source."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import smtplib
import subprocess
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import trio
from integration_support import free_port, require, spawn, wait_listening

from trio_proxsmtp.testing import FakeUpstream, run_proxy

pytestmark = pytest.mark.integration

CAT = "FilterCommand: cat"
REJECT = "FilterCommand: cat >/dev/null; echo '550 5.7.1 Rejected by test filter' >&2; exit 1"


async def swaks(port: int, *extra: str) -> subprocess.CompletedProcess[bytes]:
    argv = [require("swaks"), "--server", f"127.0.0.1:{port}", "--from", "s@x", "--to", "r@x"]
    argv += ["--helo", "client.example", "--header", "Subject: swaks test", "--timeout", "5"]
    argv += extra
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    # On a timeout swaks falls back (EHLO -> HELO) and may still succeed: never let it.
    assert b"<** Timeout" not in result.stdout, result.stdout.decode()
    return result


@pytest.mark.parametrize("config", ["", CAT], ids=["no-filter", "cat"])
async def test_swaks_message_arrives(config: str) -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
            result = await swaks(proxy.port, "--body", "hello from swaks")
            assert result.returncode == 0, result.stdout.decode()
            assert b"<-  250 2.0.0 Ok: queued as 1" in result.stdout
    [transaction] = up.transactions
    assert (transaction.mail_from, transaction.rcpt_to) == ("s@x", ["r@x"])
    assert b"Subject: swaks test\r\n" in transaction.message
    assert b"\r\n\r\nhello from swaks\r\n" in transaction.message


async def test_swaks_sees_the_filter_rejection() -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy(REJECT, upstream=up) as proxy:
            result = await swaks(proxy.port)
    assert result.returncode != 0
    assert b"<** 550 5.7.1 Rejected by test filter" in result.stdout
    assert up.transactions == []
    assert b"RSET\r\n" in up.received


async def test_swaks_pipeline_falls_back_without_the_extension() -> None:
    """We strip PIPELINING from EHLO, so swaks --pipeline must notice and send lock-step."""
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy(CAT, upstream=up) as proxy:
            result = await swaks(proxy.port, "--pipeline", "--body", "piped")
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert "PIPELINING" not in output
    # Lock-step: each command's reply comes before the next command (swaks prints the
    # pipelined commands together, then their replies, when it can pipeline).
    assert " -> MAIL FROM:<s@x>\n<-  250 " in output
    assert " -> RCPT TO:<r@x>\n<-  250 " in output
    assert " -> DATA\n<-  354 " in output
    [transaction] = up.transactions
    assert b"\r\n\r\npiped\r\n" in transaction.message


async def test_swaks_pipelines_when_pipelining_is_on() -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy(CAT + "\nPipelining: on", upstream=up) as proxy:
            result = await swaks(proxy.port, "--pipeline", "--body", "piped")
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert "<-  250-PIPELINING" in output
    # swaks sent MAIL, RCPT and DATA together, then read the three replies, in order.
    together = r" -> MAIL FROM:<s@x>\n -> RCPT TO:<r@x>\n -> DATA\n"
    assert re.search(together + r"<-  250 .*\n<-  250 .*\n<-  354 ", output), output
    # Upstream, one at a time and in order (DATA once the message was read and filtered).
    envelope = [c for c in up.commands if c.split(b" ")[0] in (b"MAIL", b"RCPT", b"DATA")]
    assert envelope == [b"MAIL FROM:<s@x>", b"RCPT TO:<r@x>", b"DATA"]
    [transaction] = up.transactions
    assert b"\r\n\r\npiped\r\n" in transaction.message


async def test_swaks_tls(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    config = f"{CAT}\nTLSCertificate: {cert}\nTLSKey: {key}"
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
            result = await swaks(proxy.port, "--tls", "--body", "secret")
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert "<-  220 2.0.0 Ready to start TLS" in output
    assert "=== TLS started with cipher TLSv1" in output
    [transaction] = up.transactions
    assert b"\r\n\r\nsecret\r\n" in transaction.message


async def test_smtplib_client() -> None:
    message = EmailMessage()
    message["Subject"] = "smtplib test"
    message["From"] = "s@x"
    message["To"] = "a@x, b@x"
    message.set_content(".leading dot\nüñíçødé body\n")

    def send(port: int) -> dict[str, tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.example")
            assert not client.has_extn("pipelining") and not client.has_extn("starttls")
            refused = client.send_message(message, "s@x", ["a@x", "reject@x", "b@x"])
            client.quit()
            return refused

    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy(CAT, upstream=up) as proxy:
            refused = await trio.to_thread.run_sync(send, proxy.port)
    assert list(refused) == ["reject@x"]
    [transaction] = up.transactions
    assert transaction.rcpt_to == ["a@x", "b@x"]
    assert b"\r\n.leading dot\r\n" in transaction.message
    assert b"Subject: smtplib test\r\n" in transaction.message


async def test_smtp_sink_as_upstream(tmp_path: Path) -> None:
    sink = require("smtp-sink")
    port = free_port()
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    argv = [sink, "-d", f"{dumps}/%M."]
    if os.geteuid() == 0:
        # As root smtp-sink must switch to nobody, who cannot enter pytest's 0700 tmp
        # directory: chroot into a world-writable one instead.
        dumps.chmod(0o777)
        argv = [sink, "-u", "nobody", "-R", str(dumps), "-d", "/%M."]
    argv += [f"127.0.0.1:{port}", "100"]
    with trio.fail_after(30):
        async with spawn(argv, log=tmp_path / "sink.log", cwd=tmp_path) as process:
            await wait_listening(port, process)
            async with run_proxy(CAT, upstream=f"127.0.0.1:{port}") as proxy:
                result = await swaks(proxy.port, "--body", "to the sink")
                assert result.returncode == 0, result.stdout.decode()
                assert b"<-  250 " in result.stdout
            while not any(p.stat().st_size for p in dumps.rglob("*") if p.is_file()):
                await trio.sleep(0.05)
    [dump] = [p for p in dumps.rglob("*") if p.is_file()]
    content = dump.read_bytes()
    assert b"Subject: swaks test" in content
    assert b"to the sink" in content


def _mask(message: bytes) -> bytes:
    """smtp-source's varying header lines (date, message id) replaced by a fixed mark."""
    return re.sub(rb"^(Date|Message-Id): [^\r\n]*", rb"\1: *", message, flags=re.MULTILINE)


async def _smtp_source(port: int, messages: int, sessions: int) -> None:
    argv = [require("smtp-source"), "-s", str(sessions), "-m", str(messages), "-l", "3000"]
    argv += ["-d", "-N", "-M", "source.example", "-f", "s@x", "-t", "r@x", f"127.0.0.1:{port}"]
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()


async def test_smtp_source_1000_messages_through_cat() -> None:
    """Every message arrives exactly once, byte-exact against a direct run of smtp-source.

    ``-N`` numbers each recipient, so the envelope identifies each of the 1,000 messages.
    """
    messages, sessions = 1000, 20
    with trio.fail_after(90):
        async with FakeUpstream() as direct:
            await _smtp_source(direct.port, 20, 2)
        async with (
            FakeUpstream() as up,
            run_proxy(CAT + "\nMaxConnections: 64", upstream=up) as proxy,
        ):
            await _smtp_source(proxy.port, messages, sessions)
    reference = {_mask(t.message) for t in direct.transactions}
    assert len(reference) == 1, "smtp-source makes one message shape for a given -l"
    assert len(up.transactions) == messages
    counts = collections.Counter(t.rcpt_to[0] for t in up.transactions)
    assert len(counts) == messages and set(counts.values()) == {1}
    for transaction in up.transactions:
        assert _mask(transaction.message) in reference
    assert up.connections == sessions


@contextlib.asynccontextmanager
async def _smtp_sink(tmp_path: Path, name: str) -> AsyncIterator[tuple[int, Path]]:
    """Postfix's smtp-sink dumping every transaction to its own file in (port, folder)."""
    port = free_port()
    dumps = tmp_path / name
    dumps.mkdir()
    argv = [require("smtp-sink"), "-d", f"{dumps}/%M."]
    if os.geteuid() == 0:  # as root it must switch to nobody: chroot into a 0777 folder
        dumps.chmod(0o777)
        argv = [require("smtp-sink"), "-u", "nobody", "-R", str(dumps), "-d", "/%M."]
    argv += [f"127.0.0.1:{port}", "1000"]
    async with spawn(argv, log=tmp_path / f"{name}.log", cwd=tmp_path) as process:
        await wait_listening(port, process)
        yield port, dumps


def _sink_dumps(dumps: Path) -> dict[bytes, bytes]:
    """{recipient: dump with the per-message lines masked} of every dump file."""
    found: dict[bytes, bytes] = {}
    for path in dumps.rglob("*"):
        if not path.is_file():
            continue
        dump = path.read_bytes()
        rcpt = re.search(rb"^X-Rcpt-Args: <(\d+)r@x>$", dump, re.MULTILINE)
        assert rcpt is not None, dump[:300]
        assert rcpt.group(1) not in found, f"message {rcpt.group(1)!r} arrived twice"
        masked = re.sub(rb"^X-Rcpt-Args: [^\n]*\n", b"", dump, flags=re.MULTILINE)
        masked = re.sub(rb"^Received: .*?\n(?=\S)", b"Received: *\n", masked, flags=re.S | re.M)
        found[rcpt.group(1)] = _mask(masked)
    return found


async def test_smtp_source_1000_messages_through_cat_to_smtp_sink(tmp_path: Path) -> None:
    """smtp-source -> proxy (cat) -> smtp-sink, 1,000 messages over 20 sessions: each
    arrives exactly once, and equal to what smtp-sink receives from smtp-source directly."""
    messages, sessions = 1000, 20
    with trio.fail_after(120):
        async with _smtp_sink(tmp_path, "direct") as (port, direct):
            await _smtp_source(port, 3, 1)
            await _wait_for_files(direct, 3)
        async with (
            _smtp_sink(tmp_path, "proxied") as (port, proxied),
            run_proxy(CAT + "\nMaxConnections: 64", upstream=f"127.0.0.1:{port}") as proxy,
        ):
            await _smtp_source(proxy.port, messages, sessions)
            await _wait_for_files(proxied, messages)
            assert proxy.leftovers() == []
    reference = set(_sink_dumps(direct).values())
    assert len(reference) == 1, "one message shape for one smtp-source -l"
    arrived = _sink_dumps(proxied)
    assert sorted(int(n) for n in arrived) == list(range(1, messages + 1))
    assert set(arrived.values()) == reference


async def _wait_for_files(folder: Path, count: int) -> None:
    """smtp-sink writes a dump after it answered the final "."; wait until all are there."""
    while sum(1 for p in folder.rglob("*") if p.is_file() and p.stat().st_size) < count:
        await trio.sleep(0.05)
