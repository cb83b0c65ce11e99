"""Fake spamd and clamd for tests: try your `Scanners:` set-up without SpamAssassin or
ClamAV.  Each records what it got and answers as told::

    spamd = FakeSpamd(score=7.2)             # spam at 7.2/5.0
    clamd = FakeClamd(virus="Eicar-Test-Signature")
    async with spamd.serving() as s, clamd.serving() as c:
        ...  # Scanners: s, c   ("spamd:inet:127.0.0.1:PORT", "clamd:inet:127.0.0.1:PORT")
    assert spamd.messages[0].startswith(b"Subject:")

`answer` overrides the verdict for the failure cases: `HANGUP` (close without a word),
`STALL` (read the message, never answer), or raw ``bytes`` sent as the whole answer
(garbage, a cut answer, clamd's ``INSTREAM size limit exceeded. ERROR``).  ``delay``
waits that many seconds before answering (use the autojump clock).  `handle` serves one
connection on any Trio stream (memory streams in tests).

The fake SMTP filter server of `FilterType: smtp` is `FakeUpstream`: its ``replies``
refuse at MAIL, RCPT or the final dot, its ``delays`` make it slow.
"""

from __future__ import annotations

import contextlib
import enum
import struct
from collections.abc import AsyncIterator

import trio

from trio_proxsmtp.testing.listening import serving_on

__all__ = ["HANGUP", "STALL", "FakeClamd", "FakeSpamd"]


class _Special(enum.Enum):
    HANGUP = "hangup"
    STALL = "stall"


HANGUP = _Special.HANGUP
STALL = _Special.STALL
Answer = _Special | bytes | None


class _FakeScanner:
    kind = ""

    def __init__(self, *, answer: Answer = None, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.messages: list[bytes] = []  # each message scanned, as received
        self.connections = 0
        self.address = ""

    @contextlib.asynccontextmanager
    async def serving(self, unix_path: str | None = None) -> AsyncIterator[str]:
        """Listen (127.0.0.1 port 0, or ``unix_path``); yields the ``Scanners:`` entry."""
        async with serving_on(self.handle, unix_path) as address:
            self.address = f"{self.kind}:{address}"
            yield self.address

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one request on `stream`, then close it."""
        self.connections += 1
        try:
            if self.answer is HANGUP:
                return
            message = await self._read(_Reader(stream))
            if message is None:
                return
            self.messages.append(message)
            if self.answer is STALL:
                await trio.sleep_forever()
            await trio.sleep(self.delay)
            answer = self.answer if isinstance(self.answer, bytes) else self._verdict(message)
            await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    async def _read(self, reader: _Reader) -> bytes | None:
        raise NotImplementedError

    def _verdict(self, message: bytes) -> bytes:
        raise NotImplementedError


class _Reader:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def until(self, marker: bytes) -> bytes | None:
        while (at := self.buffer.find(marker)) < 0:
            if not await self.fill():
                return None
        out = bytes(self.buffer[: at + len(marker)])
        del self.buffer[: at + len(marker)]
        return out

    async def exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not await self.fill():
                return None
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out


class FakeSpamd(_FakeScanner):
    """spamd (SPAMC 1.5, HEADERS/PROCESS/CHECK/SYMBOLS all answered as HEADERS): spam
    when `score` ≥ `threshold`; `requests` holds each request's head lines."""

    kind = "spamd"

    def __init__(
        self,
        *,
        score: float = 0.5,
        threshold: float = 5.0,
        answer: Answer = None,
        delay: float = 0.0,
    ) -> None:
        super().__init__(answer=answer, delay=delay)
        self.score = score
        self.threshold = threshold
        self.requests: list[list[str]] = []

    async def _read(self, reader: _Reader) -> bytes | None:
        head = await reader.until(b"\r\n\r\n")
        if head is None:
            return None
        lines = head.decode("utf-8", "replace").split("\r\n")[:-2]
        self.requests.append(lines)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        return await reader.exactly(length)

    def _verdict(self, message: bytes) -> bytes:
        spam = self.score >= self.threshold
        status = (
            f"X-Spam-Status: {'Yes' if spam else 'No'}, score={self.score:.1f} "
            f"required={self.threshold:.1f}\r\n\ttests=FAKE_SPAMD autolearn=no\r\n"
        )
        fields = status + f"X-Spam-Level: {'*' * max(0, int(self.score))}\r\n"
        if spam:
            fields = "X-Spam-Flag: YES\r\n" + fields
        # As spamd, the message's own X-Spam-* fields are not in its answer.
        header_section = b"".join(
            line + b"\r\n"
            for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            if not line.lower().startswith(b"x-spam-")
        )
        body = header_section + fields.encode() + b"\r\n"
        verdict = f"{'True' if spam else 'False'} ; {self.score:.1f} / {self.threshold:.1f}"
        return (
            f"SPAMD/1.1 0 EX_OK\r\nContent-length: {len(body)}\r\nSpam: {verdict}\r\n\r\n"
        ).encode() + body


class FakeClamd(_FakeScanner):
    """clamd's zINSTREAM: ``stream: OK``, or ``stream: VIRUS FOUND`` when `virus` is set
    (or when `signature` occurs in the message)."""

    kind = "clamd"

    def __init__(
        self,
        *,
        virus: str | None = None,
        signature: bytes | None = None,
        answer: Answer = None,
        delay: float = 0.0,
    ) -> None:
        super().__init__(answer=answer, delay=delay)
        self.virus = virus
        self.signature = signature
        self.commands: list[bytes] = []
        self.chunk_sizes: list[list[int]] = []  # per stream, the size of each chunk

    async def _read(self, reader: _Reader) -> bytes | None:
        command = await reader.until(b"\0")
        if command is None:
            return None
        self.commands.append(command)
        parts: list[bytes] = []
        sizes: list[int] = []
        self.chunk_sizes.append(sizes)
        while True:
            prefix = await reader.exactly(4)
            if prefix is None:
                return None
            (size,) = struct.unpack(">I", prefix)
            if size == 0:
                return b"".join(parts)
            chunk = await reader.exactly(size)
            if chunk is None:
                return None
            parts.append(chunk)
            sizes.append(size)

    def _verdict(self, message: bytes) -> bytes:
        found = self.virus is not None and (self.signature is None or self.signature in message)
        return f"stream: {self.virus} FOUND\0".encode() if found else b"stream: OK\0"
