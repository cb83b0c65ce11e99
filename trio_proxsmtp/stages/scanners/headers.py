"""The scanners' header fields added to the message that goes on: a new spool, the fields
placed at the end of the header section as the Header option's are
(`protocol/message/header.py`, docs/behaviour.md §7.2)."""

from __future__ import annotations

from collections.abc import Sequence

from trio_proxsmtp.protocol.message.header import HeaderInserter
from trio_proxsmtp.protocol.message.strip import HeaderFieldStripper
from trio_proxsmtp.stages.spool import Spool

__all__ = ["with_headers"]


def with_headers(message: Spool, headers: Sequence[bytes], directory: str) -> Spool:
    """A new spool holding `message` with `headers` (whole fields, each ending in CRLF)
    added, and the message's own ``X-Spam-*`` fields removed when `headers` has some
    (spamd's verdict replaces any a sender wrote); raises OSError (the caller answers 451),
    leaving nothing behind."""
    inserter = HeaderInserter(b"".join(headers).removesuffix(b"\r\n"))
    owns_spam_fields = any(h[:7].lower() == b"x-spam-" for h in headers)
    stripper = HeaderFieldStripper(b"x-spam-") if owns_spam_fields else None
    output = Spool.create(directory, named=False)
    try:
        for chunk in message.chunks():
            output.write(inserter.feed(stripper.feed(chunk) if stripper else chunk))
        tail = stripper.finish() if stripper else b""
        output.write(inserter.feed(tail) + inserter.finish())
        output.finish()
    except BaseException:
        output.close()
        raise
    return output
