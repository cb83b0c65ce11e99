"""Headers on top of the message: PolicyService's PREPEND answers (docs/behaviour.md
§11.9), put before the message's first line and after the Header option's ``Received:``
line, where Postfix puts them under its own Received:.  Wraps the Header option's
`HeaderInserter` (or none), with its interface (`feed`, `finish`)."""

from __future__ import annotations

from collections.abc import Sequence

from trio_proxsmtp.protocol.message.header import CRLF, HeaderInserter

__all__ = ["Prepender", "with_prepended"]


class Prepender:
    """Streams a message through, the headers first, then through `inner`."""

    def __init__(self, headers: Sequence[str], inner: HeaderInserter | None) -> None:
        self._head = b"".join(
            header.encode("utf-8", "surrogateescape") + CRLF for header in headers
        )
        self._inner = inner
        self._started = False

    def feed(self, data: bytes) -> bytes:
        if not self._started:
            self._started = True
            data = self._head + data
        return self._inner.feed(data) if self._inner is not None else data

    def finish(self) -> bytes:
        out = b"" if self._started else self.feed(b"")  # an empty message: the headers
        return out + (self._inner.finish() if self._inner is not None else b"")


def with_prepended(
    headers: Sequence[str], inner: HeaderInserter | None
) -> HeaderInserter | Prepender | None:
    """`inner` alone without headers to prepend."""
    return Prepender(headers, inner) if headers else inner
