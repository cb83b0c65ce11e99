"""SpamAssassin's spamd over SPAMC 1.5 (`protocol/scanners/spamc.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import trio

from trio_proxsmtp.protocol.scanners.errors import ScannerProtocolError
from trio_proxsmtp.protocol.scanners.spamc import parse_spamd_answer, spamc_request
from trio_proxsmtp.protocol.scanners.verdict import SPAM_REJECT, ScanKind, ScanResult
from trio_proxsmtp.stages.scanners.link import (
    ScannerFailure,
    ScannerTimeout,
    connect,
    read_to_end,
    send_all,
)
from trio_proxsmtp.stages.settings import MilterAddress, ScannerSettings

__all__ = ["scan_spamd"]


async def scan_spamd(
    address: MilterAddress,
    settings: ScannerSettings,
    chunks: Callable[[], Iterator[bytes]],
    size: int,
) -> ScanResult:
    """One message through spamd; a message over SpamdMaxSize is not scanned (a pass that
    says so). Raises `ScannerFailure`."""
    if size > settings.spamd_max_size:
        return ScanResult("spamd", ScanKind.PASS, f"not scanned (size {size} > SpamdMaxSize)")
    stream = await connect(address, settings.connect_timeout)
    async with stream:
        with trio.move_on_after(settings.timeout) as scope:
            await send_all(stream, spamc_request(size, settings.spamd_user))
            for chunk in chunks():
                await send_all(stream, chunk)
            data = await read_to_end(stream)
        if scope.cancelled_caught:
            raise ScannerTimeout(f"no answer within ScannerTimeout ({settings.timeout:g}s)")
    try:
        answer = parse_spamd_answer(data)
    except ScannerProtocolError as exc:
        raise ScannerFailure(str(exc)) from None
    score = settings.spamd_reject_score
    if score is not None and answer.score >= score:
        return ScanResult("spamd", ScanKind.REJECT, answer.note, SPAM_REJECT)
    return ScanResult("spamd", ScanKind.PASS, answer.note, headers=answer.headers)
