"""The scanner clients and the runner against the fakes on memory streams: every failure
mode (down, slow to connect, slow to answer, hanging up, answering garbage, clamd's size
limit) under the autojump clock, and the verdicts combined (docs/behaviour.md §11.16)."""

from __future__ import annotations

import logging

import pytest
import trio
from scanner_support import BLACKHOLE, CLAMD, SPAMD, memory_scanners

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.common.metrics import Metrics
from trio_proxsmtp.config.options import parse_milter_address
from trio_proxsmtp.protocol.scanners.verdict import SCANNER_TEMPFAIL, Combined, Outcome
from trio_proxsmtp.stages.scanners.runner import run_scanners
from trio_proxsmtp.stages.settings import (
    ScannerAddress,
    ScannerDefaultAction,
    ScannerKind,
    ScannerSettings,
)
from trio_proxsmtp.testing.fake_scanners import HANGUP, STALL, FakeClamd, FakeSpamd

MESSAGE = b"From: s@x\r\nSubject: t\r\n\r\n" + b"body line\r\n" * 20000  # ~220 kB
LOG = logging.LoggerAdapter(logging.getLogger(LOGGER_NAME), {})


def settings(*entries: str, **options: object) -> ScannerSettings:
    scanners = tuple(
        ScannerAddress(ScannerKind(kind), parse_milter_address(address))
        for kind, _, address in (entry.partition(":") for entry in entries)
    )
    return ScannerSettings(scanners=scanners, **options)  # type: ignore[arg-type]


class Recorder(Metrics):
    def __init__(self) -> None:
        self.done: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str]] = []

    def scanner_done(self, scanner: str, result: str, seconds: float) -> None:
        self.done.append((scanner, result))

    def scanner_failed(self, scanner: str, reason: str) -> None:
        self.failed.append((scanner, reason))


async def scan(
    monkeypatch: pytest.MonkeyPatch,
    fakes: dict[str, FakeSpamd | FakeClamd],
    config: ScannerSettings,
    message: bytes = MESSAGE,
    metrics: Metrics | None = None,
) -> Combined:
    async with trio.open_nursery() as nursery:
        memory_scanners(monkeypatch, nursery, {k.partition(":")[2]: v for k, v in fakes.items()})
        verdict = await run_scanners(
            config, lambda: iter([message]), len(message), log=LOG, metrics=metrics or Recorder()
        )
        nursery.cancel_scope.cancel()
    return verdict


async def test_both_clean_the_message_goes_on_with_spamds_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spam, clam = FakeSpamd(score=1.5), FakeClamd()
    metrics = Recorder()
    verdict = await scan(
        monkeypatch, {SPAMD: spam, CLAMD: clam}, settings(SPAMD, CLAMD), metrics=metrics
    )
    assert verdict.outcome is Outcome.ACCEPT
    assert verdict.decided == "spamd:1.5/5.0 clamd:OK"
    assert [h.split(b":")[0] for h in verdict.headers] == [b"X-Spam-Status", b"X-Spam-Level"]
    assert spam.messages == [MESSAGE] and clam.messages == [MESSAGE]
    assert spam.requests[0][:2] == ["HEADERS SPAMC/1.5", f"Content-length: {len(MESSAGE)}"]
    assert clam.commands == [b"zINSTREAM\0"]
    assert sorted(metrics.done) == [("clamd", "pass"), ("spamd", "pass")]


async def test_scanners_run_at_once(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    spam, clam = FakeSpamd(delay=10), FakeClamd(delay=10)
    started = trio.current_time()
    await scan(monkeypatch, {SPAMD: spam, CLAMD: clam}, settings(SPAMD, CLAMD))
    assert trio.current_time() - started == pytest.approx(10, abs=0.5)


async def test_spam_over_the_reject_score_is_refused_under_it_tagged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused = await scan(
        monkeypatch, {SPAMD: FakeSpamd(score=7.2)}, settings(SPAMD, spamd_reject_score=5.0)
    )
    assert refused.outcome is Outcome.REJECT and refused.decided == "spamd:7.2/5.0"
    assert refused.reply is not None
    assert refused.reply.to_bytes() == b"550 5.7.1 Message rejected as spam\r\n"
    tagged = await scan(monkeypatch, {SPAMD: FakeSpamd(score=7.2)}, settings(SPAMD))
    assert tagged.outcome is Outcome.ACCEPT
    assert tagged.headers[0] == b"X-Spam-Flag: YES\r\n"
    under = await scan(
        monkeypatch, {SPAMD: FakeSpamd(score=4.9)}, settings(SPAMD, spamd_reject_score=5.0)
    )
    assert under.outcome is Outcome.ACCEPT


async def test_spamd_user_and_max_size(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    spam = FakeSpamd(score=9)
    await scan(monkeypatch, {SPAMD: spam}, settings(SPAMD, spamd_user="filter"))
    assert "User: filter" in spam.requests[0]
    big = await scan(
        monkeypatch, {SPAMD: spam}, settings(SPAMD, spamd_max_size=1000, spamd_reject_score=5.0)
    )
    assert big.outcome is Outcome.ACCEPT and len(spam.messages) == 1  # not sent
    assert big.decided == f"spamd:not scanned (size {len(MESSAGE)} > SpamdMaxSize)"
    assert any("not scanned" in r.getMessage() for r in caplog.records)


async def test_a_virus_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    verdict = await scan(
        monkeypatch, {CLAMD: FakeClamd(virus="Eicar-Test-Signature")}, settings(CLAMD)
    )
    assert verdict.outcome is Outcome.REJECT
    assert verdict.decided == "clamd:Eicar-Test-Signature FOUND"
    assert verdict.reply is not None
    assert verdict.reply.to_bytes() == b"554 5.7.1 Virus found: Eicar-Test-Signature\r\n"


async def test_the_message_goes_to_clamd_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    clam = FakeClamd()
    await scan(monkeypatch, {CLAMD: clam}, settings(CLAMD))
    assert clam.messages == [MESSAGE]
    [sizes] = clam.chunk_sizes
    assert len(sizes) == 4 and max(sizes) == 65536 and sum(sizes) == len(MESSAGE)


FAILURES = [
    pytest.param({}, "cannot connect", "error", id="down"),
    pytest.param({"answer": HANGUP}, "", "error", id="hangs-up"),
    pytest.param({"answer": STALL}, "no answer within ScannerTimeout", "timeout", id="stalls"),
    pytest.param({"delay": 31}, "no answer within ScannerTimeout", "timeout", id="slow"),
    pytest.param({"answer": b"garbage\r\n\r\n"}, "", "error", id="garbage"),
]


@pytest.mark.parametrize("kind", [SPAMD, CLAMD])
@pytest.mark.parametrize(("fake", "detail", "reason"), FAILURES)
async def test_every_failure_is_a_tempfail_by_default_and_passes_with_accept(
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: object,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    fake: dict[str, object],
    detail: str,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    cls = FakeSpamd if kind == SPAMD else FakeClamd
    fakes = {kind: cls(**fake)} if fake else {}  # type: ignore[arg-type]
    metrics = Recorder()
    started = trio.current_time()
    failed = await scan(monkeypatch, fakes, settings(kind, timeout=30.0), metrics=metrics)
    assert trio.current_time() - started <= 31
    assert failed.outcome is Outcome.TEMPFAIL and failed.reply == SCANNER_TEMPFAIL
    assert failed.decided.startswith(f"{kind.split(':')[0]}:failed (") and detail in failed.decided
    assert metrics.failed == [(kind.split(":")[0], reason)]
    assert any(f"scanner {kind} failed" in r.getMessage() for r in caplog.records)
    fakes = {kind: cls(**fake)} if fake else {}  # type: ignore[arg-type]
    accepted = await scan(
        monkeypatch,
        fakes,
        settings(kind, timeout=30.0, default_action=ScannerDefaultAction.ACCEPT),
    )
    assert accepted.outcome is Outcome.ACCEPT and accepted.headers == ()


async def test_a_connect_that_never_completes_times_out(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    started = trio.current_time()
    verdict = await scan(
        monkeypatch, {}, settings(f"clamd:{BLACKHOLE}", connect_timeout=7.0, timeout=100.0)
    )
    assert trio.current_time() - started == pytest.approx(7, abs=0.5)
    assert verdict.outcome is Outcome.TEMPFAIL and "connect timed out" in verdict.decided


async def test_clamds_size_limit_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    clam = FakeClamd(answer=b"INSTREAM size limit exceeded. ERROR\0")
    verdict = await scan(monkeypatch, {CLAMD: clam}, settings(CLAMD))
    assert verdict.outcome is Outcome.TEMPFAIL
    assert "INSTREAM size limit exceeded" in verdict.decided


async def test_a_reject_beats_another_scanners_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    verdict = await scan(
        monkeypatch, {CLAMD: FakeClamd(virus="V")}, settings(SPAMD, CLAMD)
    )  # spamd is down
    assert verdict.outcome is Outcome.REJECT and verdict.decided == "clamd:V FOUND"


async def test_a_real_unix_socket_and_a_real_closed_port(tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "clamd.sock"
    clam = FakeClamd(virus="Unix.Test")
    async with clam.serving(str(path)) as entry:
        config = settings(entry)
        verdict = await run_scanners(config, lambda: iter([b"x\r\n"]), 3, log=LOG)
    assert verdict.decided == "clamd:Unix.Test FOUND" and not path.exists()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    down = await run_scanners(
        settings(f"spamd:inet:127.0.0.1:{port}"), lambda: iter([b"x"]), 1, log=LOG
    )
    assert down.outcome is Outcome.TEMPFAIL and "cannot connect" in down.decided
