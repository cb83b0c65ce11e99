"""The value parsers of the native scanners' options (`Scanners`, `SpamdRejectScore`,
`SpamdUser`, `SpamdMaxSize`; docs/behaviour.md §11.16).  Each raises ValueError with the
reason; `options.py` turns it into `Invalid` in the table."""

from __future__ import annotations

import math

from trio_proxsmtp.config.addresses import parse_milter_address
from trio_proxsmtp.stages.settings import ScannerAddress, ScannerKind

__all__ = ["parse_scanner_list", "parse_spamd_reject_score", "parse_spamd_user"]

_KINDS = ", ".join(kind.value for kind in ScannerKind)


def parse_scanner_list(value: str) -> tuple[ScannerAddress, ...]:
    """``spamd:inet:127.0.0.1:783, clamd:unix:/run/clamav/clamd.ctl``, in order; the
    ADDRESS part as for Milters."""
    scanners: list[ScannerAddress] = []
    for item in value.replace(",", " ").split():
        kind_text, colon, address = item.partition(":")
        try:
            kind = ScannerKind(kind_text.lower())
        except ValueError:
            raise ValueError(f"{item!r}: unknown scanner {kind_text!r} ({_KINDS})") from None
        if not colon or not address:
            raise ValueError(f"{item!r}: expected {kind.value}:inet:HOST:PORT or :unix:/PATH")
        scanners.append(ScannerAddress(kind, parse_milter_address(address)))
    if not scanners:
        raise ValueError("no scanner given (spamd:ADDRESS, clamd:ADDRESS)")
    return tuple(scanners)


def parse_spamd_reject_score(value: str) -> float | None:
    """A score (spamd's, e.g. ``5`` or ``7.5``), or ``off``."""
    if value.lower() in ("off", "no", "none", ""):
        return None
    try:
        score = float(value)
    except ValueError:
        raise ValueError(f"not a score: {value!r} (a number such as 5 or 7.5, or off)") from None
    if not math.isfinite(score):
        raise ValueError(f"not a score: {value!r}")
    return score


def parse_spamd_user(value: str) -> str:
    if not value or any(c.isspace() for c in value) or not value.isprintable():
        raise ValueError(f"invalid user name {value!r}")
    return value
