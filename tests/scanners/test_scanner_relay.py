"""Scanners in the relay (docs/behaviour.md §11.16): the client's reply, what the next
server gets (the scanners' header fields), the summary line's scanner=, the stage order
FilterCommand → scanners → milters, and Skip: authenticated."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from memory_relay import MemoryProxy, memory_proxied
from scanner_support import CLAMD, SPAMD, memory_scanners

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.protocol.milter.messages import AddHeader
from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.fake_milter import CONTINUE, FakeMilter
from trio_proxsmtp.testing.fake_scanners import STALL, FakeClamd, FakeSpamd

MESSAGE = b"From: s@x\r\nSubject: t\r\n\r\nbody\r\n"


@pytest.fixture(autouse=True)
def _info_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = (r.getMessage().partition(": ")[2] for r in caplog.records)
    return [line for line in lines if line.startswith("client=")]


@asynccontextmanager
async def scanned(
    monkeypatch: pytest.MonkeyPatch,
    fakes: dict[str, FakeSpamd | FakeClamd],
    config: str = "",
    scanners: str = f"{SPAMD}, {CLAMD}",
) -> AsyncIterator[tuple[FakeUpstream, MemoryProxy]]:
    async with trio.open_nursery() as nursery:
        memory_scanners(monkeypatch, nursery, {k.partition(":")[2]: v for k, v in fakes.items()})
        async with memory_proxied(f"Scanners: {scanners}\n{config}") as (up, proxy):
            yield up, proxy
        nursery.cancel_scope.cancel()


async def send(proxy: MemoryProxy, message: bytes = MESSAGE) -> list[int]:
    async with proxy.connect(timeout=500) as client:
        replies = await client.send_message("s@x", ["r@x"], message, helo="c")
        await client.command("QUIT")
    return [r.code for r in replies]


async def test_a_clean_message_goes_on_with_the_spam_headers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spam, clam = FakeSpamd(score=1.5), FakeClamd()
    async with scanned(monkeypatch, {SPAMD: spam, CLAMD: clam}) as (up, proxy):
        assert await send(proxy) == [250, 250, 354, 250]
    [t] = up.transactions
    assert t.message == (
        b"From: s@x\r\nSubject: t\r\n"
        b"X-Spam-Status: No, score=1.5 required=5.0\r\n\ttests=FAKE_SPAMD autolearn=no\r\n"
        b"X-Spam-Level: *\r\n\r\nbody\r\n"
    )
    assert spam.messages == [MESSAGE] and clam.messages == [MESSAGE]
    [summary] = summaries(caplog)
    assert "status=FILTERED, scanner=spamd:1.5/5.0 clamd:OK, " in summary


async def test_the_senders_own_x_spam_fields_are_replaced_by_spamds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forged = b"X-Spam-Flag: NO\r\nX-Spam-Status: No, forged\r\n" + MESSAGE
    async with scanned(monkeypatch, {SPAMD: FakeSpamd(score=9.0)}, scanners=SPAMD) as (up, proxy):
        assert await send(proxy, forged) == [250, 250, 354, 250]
    [t] = up.transactions
    assert b"forged" not in t.message and b"X-Spam-Flag: NO" not in t.message
    assert t.message.startswith(b"From: s@x\r\nSubject: t\r\nX-Spam-Flag: YES\r\n")
    assert t.message.endswith(b"\r\n\r\nbody\r\n")


async def test_a_virus_is_refused_554_and_never_reaches_the_next_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fakes: dict[str, FakeSpamd | FakeClamd] = {
        SPAMD: FakeSpamd(),
        CLAMD: FakeClamd(virus="Eicar-Test-Signature"),
    }
    async with (
        scanned(monkeypatch, fakes) as (up, proxy),
        proxy.connect(timeout=500) as client,
    ):
        replies = await client.send_message("s@x", ["r@x"], MESSAGE)
        assert replies[-1].to_bytes() == b"554 5.7.1 Virus found: Eicar-Test-Signature\r\n"
        await client.command("QUIT")
    assert not up.transactions
    [summary] = summaries(caplog)
    assert "status=REJECTED, scanner=clamd:Eicar-Test-Signature FOUND, " in summary


async def test_spam_over_spamd_reject_score_is_refused_550(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fakes: dict[str, FakeSpamd | FakeClamd] = {SPAMD: FakeSpamd(score=7.2)}
    async with (
        scanned(monkeypatch, fakes, "SpamdRejectScore: 5", scanners=SPAMD) as (up, proxy),
        proxy.connect(timeout=500) as client,
    ):
        replies = await client.send_message("s@x", ["r@x"], MESSAGE)
        assert replies[-1].to_bytes() == b"550 5.7.1 Message rejected as spam\r\n"
        await client.command("QUIT")
    assert not up.transactions
    [summary] = summaries(caplog)
    assert "status=REJECTED, scanner=spamd:7.2/5.0, " in summary


async def test_a_scanner_down_is_451_or_with_accept_delivered_untouched(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fakes: dict[str, FakeSpamd | FakeClamd] = {SPAMD: FakeSpamd()}  # clamd is down
    async with (
        scanned(monkeypatch, fakes) as (up, proxy),
        proxy.connect(timeout=500) as client,
    ):
        replies = await client.send_message("s@x", ["r@x"], MESSAGE)
        assert replies[-1].code == 451 and replies[-1].lines[0].startswith("4.7.1 ")
        await client.command("QUIT")
    assert not up.transactions
    [summary] = summaries(caplog)
    assert "status=FILTER-ERROR, scanner=clamd:failed (cannot connect" in summary
    assert "reason=scanner failed, relay=none" in summary
    caplog.clear()
    async with scanned(monkeypatch, {}, "ScannerDefaultAction: accept") as (up, proxy):
        assert await send(proxy) == [250, 250, 354, 250]
    assert [t.message for t in up.transactions] == [MESSAGE]


async def test_a_stalled_scanner_answers_451_after_scanner_timeout(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    fakes: dict[str, FakeSpamd | FakeClamd] = {SPAMD: FakeSpamd(answer=STALL)}
    async with scanned(monkeypatch, fakes, "ScannerTimeout: 20", scanners=SPAMD) as (up, proxy):
        started = trio.current_time()
        assert (await send(proxy))[-1] == 451
        assert trio.current_time() - started == pytest.approx(20, abs=1)
    assert not up.transactions


async def test_order_filter_command_then_scanners_then_milters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spam = FakeSpamd(score=0.0)
    milter = FakeMilter({"eom": [AddHeader("X-Signed", "yes"), CONTINUE]})
    async with milter.serving() as address:
        config = f"FilterCommand: sed s/body/FILTERED/\nMilters: {address}"
        async with scanned(monkeypatch, {SPAMD: spam}, config, scanners=SPAMD) as (up, proxy):
            assert await send(proxy) == [250, 250, 354, 250]
    filtered = MESSAGE.replace(b"body", b"FILTERED")
    assert spam.messages == [filtered]  # the scanner sees FilterCommand's output
    # The milter sees the scanners' header fields: a signing milter signs the final content.
    assert [name for name, _ in milter.sessions[0].headers] == [
        "From",
        "Subject",
        "X-Spam-Status",
        "X-Spam-Level",
    ]
    [t] = up.transactions
    assert b"X-Spam-Status: No" in t.message and b"X-Signed: yes" in t.message
    assert t.message.endswith(b"\r\n\r\nFILTERED\r\n")


async def test_skip_authenticated_skips_the_scanners(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clam = FakeClamd(virus="V")
    async with (
        scanned(monkeypatch, {CLAMD: clam}, "Skip: authenticated", scanners=CLAMD) as (up, proxy),
        proxy.connect(timeout=500) as client,
    ):
        await client.greeting()
        await client.command("EHLO c")
        assert (await client.command("AUTH PLAIN AGFAYg==")).code == 235
        replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c")
        assert [r.code for r in replies] == [250, 250, 354, 250]
        await client.command("QUIT")
    assert clam.connections == 0
    assert [t.message for t in up.transactions] == [MESSAGE]
    [summary] = summaries(caplog)
    assert "status=SKIPPED" in summary and "scanner=" not in summary


async def test_bdat_and_a_large_message_keep_no_file_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = b"Subject: big\r\n\r\n" + b"0123456789" * 100_000 + b"\r\n"
    spam, clam = FakeSpamd(), FakeClamd()
    async with (
        scanned(monkeypatch, {SPAMD: spam, CLAMD: clam}, "Chunking: on") as (up, proxy),
        proxy.connect(timeout=500) as client,
    ):
        replies = await client.send_message_bdat("s@x", ["r@x"], big, chunk_size=300_000)
        assert replies[-1].code == 250
        await client.command("QUIT")
    assert spam.messages == [] and clam.messages == [big]  # over SpamdMaxSize: not to spamd
    [t] = up.transactions
    assert t.message == big  # spamd added nothing, clamd never does


async def test_metrics_per_scanner_in_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's calls (test_scanner_clients.py) as Prometheus shows them."""
    from trio_proxsmtp.daemon.prometheus import PrometheusMetrics

    metrics = PrometheusMetrics()
    metrics.scanner_done("spamd", "pass", 0.2)
    metrics.scanner_done("clamd", "reject", 0.01)
    metrics.scanner_failed("spamd", "timeout")
    metrics.scanner_done("spamd", "failed", 60.0)
    text = metrics.exposition()[0].decode()
    assert 'proxsmtpd_scanner_verdicts_total{result="pass",scanner="spamd"} 1.0' in text
    assert 'proxsmtpd_scanner_verdicts_total{result="reject",scanner="clamd"} 1.0' in text
    assert 'proxsmtpd_scanner_verdicts_total{result="failed",scanner="spamd"} 1.0' in text
    assert 'proxsmtpd_scanner_failures_total{reason="timeout",scanner="spamd"} 1.0' in text
    assert 'proxsmtpd_scanner_duration_seconds_count{scanner="spamd"} 2.0' in text
