"""A deliberately lenient next server, for the smuggling tests (docs/behaviour.md §5.1).

It takes a command line to end at a CR, an LF or a CRLF, and ends DATA at a line that is a
"." between any of those (NUL bytes ignored): `\\n.\\n`, `\\r.\\r`, `\\n.\\r\\n`,
`\\r\\n.\\n`, `\\r\\n\\x00.\\r\\n`... as the sloppiest servers of the published smuggling
research do. Whatever follows its idea of the end is read as commands, so a message that
smuggles a second transaction past the proxy shows here as two transactions. It also
keeps every byte it received, for the bare CR/LF checks.
"""

from __future__ import annotations

import re

import attrs
import trio

__all__ = ["END_OF_DATA", "LenientTransaction", "LenientUpstream", "bare_line_ends"]

# A line end as the sloppiest server sees one, and its idea of the end of DATA.
_LINE_END = re.compile(rb"\r\n|\r|\n")
END_OF_DATA = re.compile(rb"(?:\A|(\r\n|\r|\n))\x00*\.\x00*(?:\r\n|\r|\n)")
_BDAT = re.compile(rb"BDAT +([0-9]+)( +LAST)?", re.IGNORECASE)


def bare_line_ends(wire: bytes) -> int:
    """How many CRs not followed by LF, and LFs not preceded by CR, `wire` holds."""
    crlf = wire.count(b"\r\n")
    return (wire.count(b"\r") - crlf) + (wire.count(b"\n") - crlf)


@attrs.define
class LenientTransaction:
    sender: bytes
    recipients: list[bytes]
    data: bytes  # as received: DATA's bytes up to its (lenient) end's dot, or BDAT's chunks
    bdat: bool


@attrs.define
class LenientUpstream:
    """One connection's worth of the lenient server (`handle` a memory stream)."""

    chunking: bool = True
    transactions: list[LenientTransaction] = attrs.field(factory=list)
    received: bytearray = attrs.field(factory=bytearray)  # every byte, in order
    commands: list[bytes] = attrs.field(factory=list)

    async def handle(self, stream: trio.abc.Stream) -> None:
        buffer = bytearray()
        sender: bytes | None = None
        recipients: list[bytes] = []
        chunks = bytearray()

        async def more() -> bool:
            data = await stream.receive_some(65536)
            if not data:
                return False
            self.received += data
            buffer.extend(data)
            return True

        async def reply(text: bytes) -> None:
            await stream.send_all(text)

        await reply(b"220 lenient ESMTP\r\n")
        try:
            while True:
                found = _LINE_END.search(buffer)
                if found is None:
                    if not await more():
                        return
                    continue
                line = bytes(buffer[: found.start()]).replace(b"\x00", b"")
                del buffer[: found.end()]
                if not line.strip():
                    continue
                self.commands.append(line)
                verb = line.split(b" ", 1)[0].upper()
                if verb == b"EHLO":
                    keywords = [b"PIPELINING", b"8BITMIME", b"AUTH PLAIN"]
                    if self.chunking:
                        keywords.append(b"CHUNKING")
                    lines = [b"lenient", *keywords]
                    await reply(
                        b"".join(b"250-" + k + b"\r\n" for k in lines[:-1])
                        + b"250 "
                        + lines[-1]
                        + b"\r\n"
                    )
                elif verb == b"AUTH":
                    await reply(b"235 2.7.0 ok\r\n")
                elif verb == b"MAIL":
                    sender, recipients = line[10:], []
                    chunks.clear()
                    await reply(b"250 ok\r\n")
                elif verb == b"RCPT":
                    recipients.append(line[8:])
                    await reply(b"250 ok\r\n")
                elif verb == b"DATA":
                    await reply(b"354 go\r\n")
                    while (end := END_OF_DATA.search(buffer)) is None:
                        if not await more():
                            return
                    data = bytes(buffer[: end.start()]) + (end.group(1) or b"")
                    del buffer[: end.end()]
                    self._record(sender, recipients, data, bdat=False)
                    sender, recipients = None, []
                    await reply(b"250 queued\r\n")
                elif (bdat := _BDAT.fullmatch(line)) is not None:
                    size = int(bdat.group(1))
                    while len(buffer) < size:
                        if not await more():
                            return
                    chunks += buffer[:size]
                    del buffer[:size]
                    if bdat.group(2):
                        self._record(sender, recipients, bytes(chunks), bdat=True)
                        sender, recipients = None, []
                        chunks.clear()
                        await reply(b"250 queued\r\n")
                    else:
                        await reply(b"250 chunk ok\r\n")
                elif verb == b"QUIT":
                    await reply(b"221 bye\r\n")
                    return
                else:  # RSET, NOOP, anything: lenient
                    await reply(b"250 ok\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    def _record(
        self, sender: bytes | None, recipients: list[bytes], data: bytes, *, bdat: bool
    ) -> None:
        # A lenient server takes DATA even without MAIL: that, too, is a transaction.
        self.transactions.append(LenientTransaction(sender or b"", list(recipients), data, bdat))
