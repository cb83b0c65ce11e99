"""One scanner's result and how the results of all combine (docs/behaviour.md §11.16): a
refusal wins (the first in the configured order), then a temporary failure, else the
message goes on with every scanner's header fields added."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = [
    "SCANNER_TEMPFAIL",
    "SPAM_REJECT",
    "Combined",
    "ScanKind",
    "ScanResult",
    "combine",
    "virus_reply",
]

SPAM_REJECT = Reply.single(550, "5.7.1 Message rejected as spam")
SCANNER_TEMPFAIL = Reply.single(451, "4.7.1 Message could not be scanned, try again later")


def virus_reply(name: str) -> Reply:
    return Reply.single(554, f"5.7.1 Virus found: {name}")


class ScanKind(enum.Enum):
    PASS = "pass"  # scanned (or not scanned, by choice: too big) and clean
    REJECT = "reject"  # spam over SpamdRejectScore, a virus
    FAILED = "failed"  # down, slow, cut short, garbage: ScannerDefaultAction decides


@attrs.frozen
class ScanResult:
    """What one scanner (`name`, ``spamd`` or ``clamd``) said: `note` for the summary line
    (``7.2/5.0``, ``Eicar FOUND``, the failure), the `reply` of a refusal, the header
    fields to add."""

    name: str
    kind: ScanKind
    note: str
    reply: Reply | None = None
    headers: tuple[bytes, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name}:{self.note}"


class Outcome(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@attrs.frozen
class Combined:
    """The scanners' verdict: `reply` for a refusal or a failure, the `headers` to add
    when accepted; `decided` names who decided (``clamd:Eicar FOUND``), or every
    scanner's result when the message goes on."""

    outcome: Outcome
    decided: str
    reply: Reply | None = None
    headers: tuple[bytes, ...] = ()


def combine(results: Sequence[ScanResult], *, failure_accepts: bool) -> Combined:
    """The verdict of `results` (in the configured order); a failure is a temporary
    failure, or, with `failure_accepts` (ScannerDefaultAction: accept), a pass that adds
    nothing."""
    for result in results:
        if result.kind is ScanKind.REJECT:
            return Combined(Outcome.REJECT, result.label, result.reply or SPAM_REJECT)
    if not failure_accepts:
        for result in results:
            if result.kind is ScanKind.FAILED:
                return Combined(Outcome.TEMPFAIL, result.label, SCANNER_TEMPFAIL)
    headers = tuple(h for result in results if result.kind is ScanKind.PASS for h in result.headers)
    decided = " ".join(result.label for result in results)
    return Combined(Outcome.ACCEPT, decided, None, headers)
