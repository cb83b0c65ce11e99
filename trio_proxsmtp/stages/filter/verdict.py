"""What a filter's outcome means: `FilterVerdict`, and the verdict of a filter that ran to
its end (`judge`) from its exit status, the last line of its stderr (`StderrTail`, B21) and
its output.  Every local failure is the same 451 (`local_error`).
"""

from __future__ import annotations

import enum
import re

import attrs

from trio_proxsmtp.protocol.smtp.replies import LOCAL_ERROR, Reply, reply_from_text
from trio_proxsmtp.stages.spool import Spool

__all__ = [
    "STDERR_LINE_LIMIT",
    "FilterVerdict",
    "FilterVerdictKind",
    "StderrTail",
    "judge",
    "local_error",
    "too_big",
]

STDERR_LINE_LIMIT = 4096  # bytes of one stderr line kept

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class FilterVerdictKind(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    DROP = "drop"
    ERROR = "error"


@attrs.frozen
class FilterVerdict:
    """What the relay does with the message."""

    kind: FilterVerdictKind
    reply: Reply | None  # REJECT/DROP: the filter's reply; ERROR: 451 Local Error
    message: Spool | None  # ACCEPT: what to deliver (pipe: a new spool the caller closes)
    status: str  # the summary log's status= value
    detail: str  # for logs: "exit 1", "killed by signal 9", "timed out after 30s", ...
    timed_out: bool = False  # ERROR because FilterTimeout ran out (for the metrics)


def local_error(detail: str, *, timed_out: bool = False) -> FilterVerdict:
    return FilterVerdict(
        kind=FilterVerdictKind.ERROR,
        reply=LOCAL_ERROR,
        message=None,
        status="FILTER-ERROR",
        detail=detail,
        timed_out=timed_out,
    )


class StderrTail:
    """Keeps only the last non-blank stderr line, bounded, across any chunking (B21)."""

    def __init__(self) -> None:
        self.last = b""
        self._line = bytearray()

    def feed(self, data: bytes) -> None:
        lines = data.split(b"\n")
        for complete in lines[:-1]:
            self._add(complete)
            self._end_line()
        self._add(lines[-1])

    def _add(self, part: bytes) -> None:
        room = STDERR_LINE_LIMIT - len(self._line)
        if room > 0:
            self._line += part[:room]
        elif not self._line.strip():  # all whitespace so far: nothing worth keeping
            self._line[:] = part[:STDERR_LINE_LIMIT]

    def _end_line(self) -> None:
        if self._line.strip():
            self.last = bytes(self._line)
        self._line.clear()

    def text(self) -> str:
        self._end_line()
        text = self.last.decode("utf-8", errors="surrogateescape")
        return _CONTROL.sub(" ", text).strip()


# sh's exit codes for "found but not executable" and "not found".
_SHELL_CANNOT_RUN = {126: "not executable", 127: "not found"}


def judge(
    code: int,
    stderr: StderrTail,
    output: Spool | None,
    message: Spool,
    *,
    input_size: int,
    size_limit: int | None,
) -> FilterVerdict:
    """The verdict for a filter that ran to its end with exit status ``code`` (negative: the
    signal); ``output`` is pipe mode's output spool, None in file mode (``message`` itself
    is then the output, perhaps edited or replaced)."""
    if code < 0:
        return local_error(f"killed by signal {-code}")
    if code in _SHELL_CANNOT_RUN:
        text = stderr.text()
        return local_error(
            f"exit {code}: command {_SHELL_CANNOT_RUN[code]}" + (f": {text}" if text else "")
        )
    if code == 0:
        if output is None:  # file mode: the spool itself, perhaps edited or replaced
            try:
                message.refresh_size()
            except OSError as exc:
                return local_error(f"couldn't reopen {message.path}: {exc}")
            output = message
            if size_limit is not None and message.size > size_limit:
                return local_error(too_big(message.size, size_limit))
        if output.size == 0 and input_size > 0:
            return local_error(f"exit 0 but no output for a message of {input_size} bytes")
        return FilterVerdict(FilterVerdictKind.ACCEPT, None, output, "FILTERED", "exit 0")
    reply = reply_from_text(stderr.text())
    kind = FilterVerdictKind.DROP if 200 <= reply.code < 300 else FilterVerdictKind.REJECT
    return FilterVerdict(kind, reply, None, _status_text(reply), f"exit {code}")


def too_big(size: int, limit: int | None) -> str:
    return f"filter output of {size}+ bytes exceeds the size limit of {limit}"


_PREFIX = "Content Rejected; "


def _status_text(reply: Reply) -> str:
    """The summary status for a reply: what the filter said (docs/behaviour.md §6.4)."""
    text = " / ".join(reply.lines)
    if reply.code == 550 and text.startswith(_PREFIX):
        return text[len(_PREFIX) :]
    return f"{reply.code} {text}"
