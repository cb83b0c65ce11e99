"""The scanners' header fields added to the message that goes on: a new spool, the fields
placed at the end of the header section as the Header option's are
(`protocol/message/header.py`, docs/behaviour.md §7.2)."""

from __future__ import annotations

from collections.abc import Sequence

from trio_proxsmtp.protocol.message.header import HeaderInserter
from trio_proxsmtp.stages.spool import Spool

__all__ = ["with_headers"]


def with_headers(message: Spool, headers: Sequence[bytes], directory: str) -> Spool:
    """A new spool holding `message` with `headers` (whole fields, each ending in CRLF)
    added; raises OSError (the caller answers 451), leaving nothing behind."""
    inserter = HeaderInserter(b"".join(headers).removesuffix(b"\r\n"))
    output = Spool.create(directory, named=False)
    try:
        for chunk in message.chunks():
            output.write(inserter.feed(chunk))
        output.write(inserter.finish())
        output.finish()
    except BaseException:
        output.close()
        raise
    return output
