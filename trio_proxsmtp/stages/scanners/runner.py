"""All the configured scanners on one spooled message, at once; their verdicts combined
(`protocol/scanners/verdict.py`).  A scanner's failure is logged and counted here."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator

import trio

from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.protocol.scanners.verdict import Combined, ScanKind, ScanResult, combine
from trio_proxsmtp.stages.scanners.clamd import scan_clamd
from trio_proxsmtp.stages.scanners.link import ScannerFailure, ScannerTimeout
from trio_proxsmtp.stages.scanners.spamd import scan_spamd
from trio_proxsmtp.stages.settings import (
    MilterAddress,
    ScannerDefaultAction,
    ScannerKind,
    ScannerSettings,
)

__all__ = ["run_scanners"]

Scan = Callable[
    [MilterAddress, ScannerSettings, Callable[[], Iterator[bytes]], int], Awaitable[ScanResult]
]
_CLIENTS: dict[ScannerKind, Scan] = {ScannerKind.SPAMD: scan_spamd, ScannerKind.CLAMD: scan_clamd}


async def run_scanners(
    settings: ScannerSettings,
    chunks: Callable[[], Iterator[bytes]],
    size: int,
    *,
    log: logging.LoggerAdapter[logging.Logger],
    metrics: Metrics = NULL_METRICS,
) -> Combined:
    """Scan the message (`chunks()` gives its bytes, `size` their count) with every scanner
    of `settings` concurrently; the combined verdict."""
    results: list[ScanResult | None] = [None] * len(settings.scanners)

    async def one(index: int) -> None:
        scanner = settings.scanners[index]
        name = scanner.kind.value
        started = trio.current_time()
        try:
            result = await _CLIENTS[scanner.kind](scanner.address, settings, chunks, size)
        except ScannerFailure as exc:
            reason = str(exc)
            log.warning("scanner %s failed: %s", scanner.text, reason)
            metrics.scanner_failed(name, "timeout" if isinstance(exc, ScannerTimeout) else "error")
            result = ScanResult(name, ScanKind.FAILED, f"failed ({reason})")
        seconds = trio.current_time() - started
        metrics.scanner_done(name, result.kind.value, seconds)
        log.debug("scanner %s: %s (%.3fs)", scanner.text, result.note, seconds)
        if result.note.startswith("not scanned"):
            log.info("scanner %s: message %s", scanner.text, result.note)
        results[index] = result

    async with trio.open_nursery() as nursery:
        for index in range(len(settings.scanners)):
            nursery.start_soon(one, index)
    done = [result for result in results if result is not None]
    failure_accepts = settings.default_action is ScannerDefaultAction.ACCEPT
    return combine(done, failure_accepts=failure_accepts)
