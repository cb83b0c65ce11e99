"""The scanners and FilterType: smtp against the real programs (docs/behaviour.md §11.16,
§11.17): SpamAssassin's spamd (GTUBE), ClamAV's clamd with a signature database the test
writes, Postfix's smtp-sink and a Postfix smtpd with a recipient restriction as the SMTP
filter.  The client side is the relay on memory streams; the peers are real processes
on loopback, started once per session (spamd compiles its rules) and stopped by pid."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from memory_relay import MemoryProxy, memory_proxied
from postfix_support import running_postfix
from real_scanners import (
    EICAR,
    SIGNATURE,
    free_port,
    require,
    running_clamd,
    running_spamd,
    stop,
)

from trio_proxsmtp.common.log import LOGGER_NAME

pytestmark = pytest.mark.integration

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
HEAD = (
    b"From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: scanner test\r\n"
    b"Message-ID: <scanner.test@example.org>\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n\r\n"
)
PLAIN = HEAD + b"Hello, this is a plain message about the meeting on Monday.\r\n"


@pytest.fixture(autouse=True)
def _info_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)


@pytest.fixture(scope="session")
def spamd_port() -> Iterator[int]:
    with running_spamd() as port:
        yield port


@pytest.fixture(scope="session")
def clamd_port() -> Iterator[int]:
    with running_clamd() as port:
        yield port


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = (r.getMessage().partition(": ")[2] for r in caplog.records)
    return [line for line in lines if line.startswith("client=")]


async def send(
    proxy: MemoryProxy, message: bytes, rcpts: tuple[str, ...] = ("rcpt@example.org",)
) -> list[str]:
    async with proxy.connect(timeout=60) as client:
        replies = await client.send_message("sender@example.org", rcpts, message)
        await client.command("QUIT")
    return [r.to_bytes().decode().strip() for r in replies]


@asynccontextmanager
async def proxy_with(config: str) -> AsyncIterator[tuple[object, MemoryProxy]]:
    with trio.fail_after(60):
        async with memory_proxied(config) as (up, proxy):
            yield up, proxy


# -- spamd ------------------------------------------------------------------------------


async def test_spamd_tags_a_plain_message_no(
    spamd_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    forged = b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=99\r\n" + PLAIN
    async with proxy_with(f"Scanners: spamd:inet:127.0.0.1:{spamd_port}") as (up, proxy):
        assert (await send(proxy, forged))[-1].startswith("250")
    [t] = up.transactions  # type: ignore[attr-defined]
    head, _, body = t.message.partition(b"\r\n\r\n")
    assert b"\r\nX-Spam-Status: No, score=" in head and b"X-Spam-Flag" not in head
    assert b"score=99" not in head
    assert body == PLAIN.partition(b"\r\n\r\n")[2]
    [summary] = summaries(caplog)
    assert "status=FILTERED, scanner=spamd:" in summary and "/5.0" in summary


async def test_spamd_gtube_is_tagged_without_a_reject_score_and_refused_with_one(
    spamd_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    spam = HEAD + GTUBE + b"\r\n"
    scanners = f"Scanners: spamd:inet:127.0.0.1:{spamd_port}"
    async with proxy_with(scanners) as (up, proxy):
        assert (await send(proxy, spam))[-1].startswith("250")
    [t] = up.transactions  # type: ignore[attr-defined]
    assert b"\r\nX-Spam-Flag: YES\r\n" in t.message and b"X-Spam-Status: Yes" in t.message
    async with proxy_with(f"{scanners}\nSpamdRejectScore: 5") as (up, proxy):
        assert (await send(proxy, spam))[-1] == "550 5.7.1 Message rejected as spam"
    assert not up.transactions  # type: ignore[attr-defined]
    assert "status=REJECTED, scanner=spamd:1000.0/5.0" in summaries(caplog)[-1]


# -- clamd ------------------------------------------------------------------------------


async def test_clamd_refuses_the_signature_and_passes_a_clean_message(
    clamd_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with proxy_with(f"Scanners: clamd:inet:127.0.0.1:{clamd_port}") as (up, proxy):
        refused = (await send(proxy, HEAD + EICAR + b"\r\n"))[-1]
        assert refused.startswith(f"554 5.7.1 Virus found: {SIGNATURE}")
        assert (await send(proxy, PLAIN))[-1].startswith("250")
    assert [t.message for t in up.transactions] == [PLAIN]  # type: ignore[attr-defined]
    first, second = summaries(caplog)
    assert f"status=REJECTED, scanner=clamd:{SIGNATURE}" in first and " FOUND" in first
    assert "status=FILTERED, scanner=clamd:OK" in second


async def test_clamd_and_spamd_together_headers_of_spamd_on_a_clean_message(
    clamd_port: int, spamd_port: int
) -> None:
    config = f"Scanners: clamd:inet:127.0.0.1:{clamd_port}, spamd:inet:127.0.0.1:{spamd_port}"
    async with proxy_with(config) as (up, proxy):
        assert (await send(proxy, PLAIN))[-1].startswith("250")
        assert (await send(proxy, HEAD + GTUBE + b"\r\n" + EICAR + b"\r\n"))[-1].startswith("554")
    [t] = up.transactions  # type: ignore[attr-defined]
    assert b"X-Spam-Status: No" in t.message


async def test_clamd_stopped_is_451_and_with_accept_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with running_clamd() as port:
        pass  # started and stopped: nothing listens there any more
    config = f"Scanners: clamd:inet:127.0.0.1:{port}"
    async with proxy_with(config) as (up, proxy):
        assert (await send(proxy, PLAIN))[-1].startswith("451 4.7.1")
    assert "scanner=clamd:failed (cannot connect" in summaries(caplog)[-1]
    async with proxy_with(config + "\nScannerDefaultAction: accept") as (up, proxy):
        assert (await send(proxy, PLAIN))[-1].startswith("250")
    assert [t.message for t in up.transactions] == [PLAIN]  # type: ignore[attr-defined]


# -- FilterType: smtp -------------------------------------------------------------------


@asynccontextmanager
async def smtp_sink(tmp_path: Path, *options: str) -> AsyncIterator[int]:
    sink = require("smtp-sink", "postfix")
    port = free_port()
    argv = [sink, *options, f"127.0.0.1:{port}", "20"]
    if os.geteuid() == 0:
        argv[1:1] = ["-u", "nobody"]
    with open(tmp_path / "sink.log", "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    try:
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    assert process.poll() is None, (tmp_path / "sink.log").read_text()
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        yield port
    finally:
        stop(process)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), "2"),
        (("-f", "rcpt"), "5"),
        (("-r", "rcpt"), "4"),
        (("-f", "."), "5"),
        (("-r", "."), "4"),
    ],
    ids=["passes", "rcpt-5xx", "rcpt-4xx", "dot-5xx", "dot-4xx"],
)
async def test_smtp_sink_as_the_filter(
    tmp_path: Path, options: tuple[str, ...], expected: str
) -> None:
    async with smtp_sink(tmp_path, *options) as port:
        config = f"FilterType: smtp\nFilterCommand: 127.0.0.1:{port}"
        async with proxy_with(config) as (up, proxy):
            assert (await send(proxy, PLAIN))[-1][:1] == expected
    delivered = [t.message for t in up.transactions]  # type: ignore[attr-defined]
    assert delivered == ([PLAIN] if expected == "2" else [])


def test_postfix_smtpd_with_a_recipient_restriction_as_the_filter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    main_cf = [
        "smtpd_recipient_restrictions = "
        "check_recipient_access inline:{ { unknown@example.org = REJECT no such user here } }, "
        "permit_mynetworks, reject",
        "smtpd_authorized_xclient_hosts = 127.0.0.0/8",
    ]
    master_cf = [f"127.0.0.1:{port} inet n - n - - smtpd"]
    with running_postfix(main_cf=main_cf, master_cf=master_cf, listens=[port]) as postfix:

        async def main() -> None:
            config = f"FilterType: smtp\nFilterCommand: 127.0.0.1:{port}"
            async with proxy_with(config) as (up, proxy):
                refused = await send(proxy, PLAIN, ("rcpt@example.org", "unknown@example.org"))
                assert refused[-1].startswith("554 5.7.1 <unknown@example.org>")
                assert refused[-1].endswith("no such user here")
                assert (await send(proxy, PLAIN))[-1].startswith("250")
            assert [t.message for t in up.transactions] == [PLAIN]  # type: ignore[attr-defined]

        trio.run(main)
        log = postfix.log()
    # Postfix took our XCLIENT: its refusal names the client's HELO, not the proxy's EHLO.
    assert "helo=<client.example>" in log, log
    assert "status=REJECTED" in summaries(caplog)[0]
