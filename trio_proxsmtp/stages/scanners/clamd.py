"""ClamAV's clamd over zINSTREAM (`protocol/scanners/clamd.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import trio

from trio_proxsmtp.protocol.scanners.clamd import (
    END_OF_STREAM,
    INSTREAM,
    instream_chunk,
    parse_clamd_reply,
)
from trio_proxsmtp.protocol.scanners.errors import ScannerProtocolError
from trio_proxsmtp.protocol.scanners.verdict import ScanKind, ScanResult, virus_reply
from trio_proxsmtp.stages.scanners.link import (
    ScannerFailure,
    ScannerTimeout,
    connect,
    read_to_end,
    send_all,
)
from trio_proxsmtp.stages.settings import MilterAddress, ScannerSettings

__all__ = ["scan_clamd"]

CHUNK = 64 * 1024  # below clamd's StreamMaxLength granularity, one write each


async def scan_clamd(
    address: MilterAddress,
    settings: ScannerSettings,
    chunks: Callable[[], Iterator[bytes]],
    size: int,
) -> ScanResult:
    """One message through clamd; raises `ScannerFailure`."""
    stream = await connect(address, settings.connect_timeout)
    async with stream:
        with trio.move_on_after(settings.timeout) as scope:
            await send_all(stream, INSTREAM)
            try:
                for chunk in chunks():
                    for start in range(0, len(chunk), CHUNK):
                        await send_all(stream, instream_chunk(chunk[start : start + CHUNK]))
                await send_all(stream, END_OF_STREAM)
            except ScannerFailure:
                # clamd answers "INSTREAM size limit exceeded" and closes while we send:
                # its answer says more than the broken pipe.
                data = await read_to_end(stream, until=b"\0")
                if not data:
                    raise
            else:
                data = await read_to_end(stream, until=b"\0")
        if scope.cancelled_caught:
            raise ScannerTimeout(f"no answer within ScannerTimeout ({settings.timeout:g}s)")
    try:
        answer = parse_clamd_reply(data)
    except ScannerProtocolError as exc:
        raise ScannerFailure(str(exc)) from None
    if answer.virus is not None:
        return ScanResult("clamd", ScanKind.REJECT, answer.note, virus_reply(answer.virus))
    return ScanResult("clamd", ScanKind.PASS, answer.note)
