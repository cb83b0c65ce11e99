"""FakeClient: a scripted SMTP client that records every byte it receives.

It sends exactly the bytes it is told to and returns the replies it gets, so a test can
drive a proxy through any session, including broken ones::

    async with open_client("127.0.0.1", port) as c:
        assert (await c.greeting()).code == 220
        replies = await c.send_message("s@x", ["r@x"], b"Subject: t\\r\\n\\r\\nbody\\r\\n")
        assert replies[-1].code == 250
        await c.quit()

Every read has a deadline (``timeout``, default 10 s; ``trio.TooSlowError`` when it
passes) so that a hung peer fails the test instead of hanging it.

Modern SMTP: :meth:`FakeClient.pipeline` sends a group of commands in one write (RFC 2920),
:meth:`FakeClient.send_bdat` and :meth:`FakeClient.send_message_bdat` send a message in
BDAT chunks (RFC 3030), :meth:`FakeClient.starttls` upgrades the connection (RFC 3207) and
``open_client(..., tls=context)`` speaks TLS from the first byte (RFC 8314).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import trio

from trio_proxsmtp.protocol.smtp.bdat import DEFAULT_CHUNK_SIZE, bdat_command
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.protocol.smtp.reply_parser import ReplyParser

__all__ = ["FakeClient", "dot_stuff", "open_client"]

DEFAULT_TIMEOUT = 10.0


def dot_stuff(message: bytes) -> bytes:
    """The DATA payload for ``message``: dot-stuffed, ending in a line break, then ``.``.

    Line endings are sent as given (bare LFs stay bare LFs, so tests can send them); only a
    message that does not end with a line break gets a CRLF before the final dot.
    """
    stuffed = (b"." if message.startswith(b".") else b"") + message.replace(b"\n.", b"\n..")
    if stuffed and not stuffed.endswith(b"\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def _line(command: str | bytes) -> bytes:
    raw = command.encode("utf-8", "surrogateescape") if isinstance(command, str) else command
    return raw if raw.endswith(b"\n") else raw + b"\r\n"


def _mail_line(mail_from: str, parameters: Iterable[str]) -> bytes:
    return _line(" ".join([f"MAIL FROM:<{mail_from}>", *parameters]))


def _bdat_frames(chunks: Iterable[bytes]) -> list[bytes]:
    """A BDAT command and its bytes per chunk, LAST on the last (``BDAT 0 LAST`` if none)."""
    pieces = list(chunks) or [b""]
    last = len(pieces) - 1
    return [bdat_command(len(p), last=i == last) + p for i, p in enumerate(pieces)]


def _rcpt_line(rcpt: str) -> bytes:
    return _line(f"RCPT TO:<{rcpt}>")


class FakeClient:
    """An SMTP client over any Trio stream; see :func:`open_client` to connect one."""

    def __init__(
        self, stream: trio.abc.Stream, *, timeout: float = DEFAULT_TIMEOUT, max_line: int = 4096
    ) -> None:
        self.stream = stream
        self.timeout = timeout
        self.received = bytearray()
        """Every byte received, in order."""
        self.sent = bytearray()
        """Every byte sent, in order."""
        self.replies: list[Reply] = []
        """Every reply read so far, the greeting included."""
        self.closed = False
        """True once the peer closed (or reset) the connection."""
        self._parser = ReplyParser(max_line=max_line)
        self._max_line = max_line
        self._scan = 0  # bytes of `received` already fed to the parser
        self._consumed = 0  # bytes of `received` that make up the replies returned
        self._greeted = False
        self._helo_done = False

    # -- raw I/O -----------------------------------------------------------------------

    async def send(self, raw: bytes) -> None:
        """Send ``raw`` byte-exact; no reply is read."""
        self.sent += raw
        await self.stream.send_all(raw)

    async def _receive(self) -> None:
        if self.closed:
            raise EOFError("the server closed the connection")
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            chunk = b""  # a reset counts as a close for a test client
        if not chunk:
            self.closed = True
            raise EOFError("the server closed the connection")
        self.received += chunk

    def _next_reply(self) -> Reply | None:
        """Feed the parser one line at a time so `_consumed` knows where each reply ends."""
        while True:
            end = self.received.find(b"\n", self._scan)
            if end == -1:
                if len(self.received) - self._scan >= self._max_line:
                    self._parser.feed(bytes(self.received[self._scan :]))
                    self._scan = len(self.received)
                return None
            self._parser.feed(bytes(self.received[self._scan : end + 1]))
            self._scan = end + 1
            reply = self._parser.next_reply()
            if reply is not None:
                self._consumed = self._scan
                return reply

    async def read_reply(self, timeout: float | None = None) -> Reply:
        """The next complete reply; EOFError if the peer closes first.

        Raises ``trio.TooSlowError`` after ``timeout`` seconds (default: ``self.timeout``)
        and ``RemoteProtocolError`` when the bytes are not an SMTP reply.
        """
        with trio.fail_after(self.timeout if timeout is None else timeout):
            while (reply := self._next_reply()) is None:
                await self._receive()
        self._greeted = True
        self.replies.append(reply)
        return reply

    async def greeting(self, timeout: float | None = None) -> Reply:
        """Read the server's banner (the first reply)."""
        if self._greeted:
            raise RuntimeError("the greeting was already read")
        return await self.read_reply(timeout)

    async def read_eof(self, timeout: float | None = None) -> bytes:
        """Wait until the peer closes; return what arrived after the last reply read.

        The bytes are not consumed: complete replies among them can still be read.
        """
        with trio.fail_after(self.timeout if timeout is None else timeout):
            while not self.closed:
                try:
                    await self._receive()
                except EOFError:
                    break
        return bytes(self.received[self._consumed :])

    # -- SMTP --------------------------------------------------------------------------

    async def command(self, line: str | bytes, timeout: float | None = None) -> Reply:
        """Send one command (CRLF added if it has no line ending) and read its reply."""
        if not self._greeted:
            await self.greeting(timeout)
        raw = _line(line)
        await self.send(raw)
        reply = await self.read_reply(timeout)
        if raw[:5].upper() in (b"EHLO ", b"HELO ") and reply.is_positive:
            self._helo_done = True
        return reply

    async def send_message(
        self,
        mail_from: str,
        rcpts: Iterable[str],
        message: bytes,
        *,
        helo: str = "client.example",
        pipelined: bool = False,
        mail_parameters: Iterable[str] = (),
        timeout: float | None = None,
    ) -> list[Reply]:
        """Run one transaction; return the replies to MAIL, each RCPT, DATA and the dot.

        Reads the greeting and sends ``EHLO helo`` first if not done yet (those replies
        are in :attr:`replies`). Addresses are sent inside ``<>``. Without pipelining it
        stops early like a real client: after a failed MAIL, when no RCPT was accepted,
        or when DATA is not answered 354. With ``pipelined=True`` MAIL, RCPTs and DATA
        go out in one write; the message follows if DATA got 354. ``mail_parameters``
        (e.g. ``["SMTPUTF8", "BODY=8BITMIME"]``) follow MAIL's address.
        """
        replies = await self.start_message(
            mail_from,
            rcpts,
            helo=helo,
            pipelined=pipelined,
            mail_parameters=mail_parameters,
            timeout=timeout,
        )
        if replies[-1].code != 354:
            return replies
        await self.send(dot_stuff(message))
        replies.append(await self.read_reply(timeout))
        return replies

    async def start_message(
        self,
        mail_from: str,
        rcpts: Iterable[str],
        *,
        helo: str = "client.example",
        pipelined: bool = False,
        mail_parameters: Iterable[str] = (),
        timeout: float | None = None,
    ) -> list[Reply]:
        """`send_message` up to DATA's reply: the message itself is yours to send (or not,
        to test a client that leaves in the middle). Returns the replies so far."""
        recipients = list(rcpts)
        if not self._helo_done:
            await self.command(f"EHLO {helo}", timeout)
        commands = [
            _mail_line(mail_from, mail_parameters),
            *(_rcpt_line(r) for r in recipients),
            b"DATA\r\n",
        ]
        replies: list[Reply] = []
        if pipelined:
            await self.send(b"".join(commands))
            for _ in commands:
                replies.append(await self.read_reply(timeout))
        else:
            for index, command in enumerate(commands):
                await self.send(command)
                replies.append(reply := await self.read_reply(timeout))
                if index == 0 and not reply.is_positive:
                    return replies
                if index == len(recipients) and not any(r.is_positive for r in replies[1:]):
                    return replies
        return replies

    async def pipeline(
        self, lines: Iterable[str | bytes], timeout: float | None = None
    ) -> list[Reply]:
        """Send commands in one write (CRLF added where missing), then read one reply each."""
        if not self._greeted:
            await self.greeting(timeout)
        raw = [_line(line) for line in lines]
        await self.send(b"".join(raw))
        return [await self.read_reply(timeout) for _ in raw]

    async def starttls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send STARTTLS; on 220, handshake (within the timeout) and go on over TLS.

        Bytes that came after the 220 in plain text are dropped, as a server must drop
        a client's. The client has to say EHLO again (RFC 3207).
        """
        reply = await self.command("STARTTLS", timeout)
        if reply.code != 220:
            return reply
        self._scan = self._consumed = len(self.received)
        self._parser = ReplyParser(max_line=self._max_line)
        tls = trio.SSLStream(self.stream, context, server_hostname=server_hostname)
        with trio.fail_after(self.timeout if timeout is None else timeout):
            await tls.do_handshake()
        self.stream = tls
        self._helo_done = False
        return reply

    async def send_bdat(
        self,
        chunks: Iterable[bytes],
        *,
        pipelined: bool = False,
        timeout: float | None = None,
    ) -> list[Reply]:
        """Send a message as BDAT chunks (the last one with LAST; none: ``BDAT 0 LAST``).

        Returns one reply per chunk. Lock-step it stops after a refused chunk, like a
        real client; pipelined every chunk goes in one write.
        """
        frames = _bdat_frames(chunks)
        if pipelined:
            await self.send(b"".join(frames))
            return [await self.read_reply(timeout) for _ in frames]
        replies = []
        for frame in frames:
            await self.send(frame)
            replies.append(reply := await self.read_reply(timeout))
            if not reply.is_positive:
                break
        return replies

    async def send_message_bdat(
        self,
        mail_from: str,
        rcpts: Iterable[str],
        message: bytes,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        helo: str = "client.example",
        mail_parameters: Iterable[str] = (),
        pipelined: bool = False,
        timeout: float | None = None,
    ) -> list[Reply]:
        """Like :meth:`send_message` with BDAT chunks of ``chunk_size`` for DATA.

        Returns the replies to MAIL, each RCPT and each chunk. Pipelined, MAIL, the RCPTs
        and every chunk go in one write (RFC 3030 §4.2).
        """
        if not self._helo_done:
            await self.command(f"EHLO {helo}", timeout)
        recipients = list(rcpts)
        chunks = [message[i : i + chunk_size] for i in range(0, len(message), chunk_size)]
        envelope = [_mail_line(mail_from, mail_parameters), *(_rcpt_line(r) for r in recipients)]
        if pipelined:
            frames = _bdat_frames(chunks)
            await self.send(b"".join(envelope + frames))
            return [await self.read_reply(timeout) for _ in envelope + frames]
        replies = []
        for index, command in enumerate(envelope):
            await self.send(command)
            replies.append(reply := await self.read_reply(timeout))
            if index == 0 and not reply.is_positive:
                return replies
        if not any(r.is_positive for r in replies[1:]):
            return replies
        return replies + await self.send_bdat(chunks, timeout=timeout)

    async def quit(self, timeout: float | None = None) -> Reply:
        """Send QUIT and read its reply (the connection is left for the peer to close)."""
        return await self.command("QUIT", timeout)

    async def aclose(self) -> None:
        """Close our side of the connection."""
        await self.stream.aclose()


@asynccontextmanager
async def open_client(
    host: str | os.PathLike[str],
    port: int | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    proxy_header: bytes | None = None,
) -> AsyncIterator[FakeClient]:
    """Connect a :class:`FakeClient` to ``host:port``, or to the Unix socket ``host`` when
    ``port`` is None; the connection is closed when the block ends.

    With ``tls`` it speaks TLS from the first byte (implicit TLS, RFC 8314), checking the
    certificate as ``tls`` says against ``server_hostname`` (default: ``host``).

    ``proxy_header`` is sent first, as a load balancer would (``ProxyProtocol: on``): the
    bytes of ``protocol.proxy_header_build.encode_v1`` / ``encode_v2``, or any bytes to test a
    broken one. It is not part of :attr:`FakeClient.sent`.
    """
    with trio.fail_after(timeout):
        if port is None:
            sock: trio.SocketStream = await trio.open_unix_socket(os.fspath(host))
        else:
            sock = await trio.open_tcp_stream(os.fspath(host), port)
        if proxy_header is not None:
            try:
                await sock.send_all(proxy_header)
            except BaseException:
                await trio.aclose_forcefully(sock)
                raise
    stream: trio.abc.Stream = sock
    if tls is not None:
        name = server_hostname if server_hostname is not None else os.fspath(host)
        stream = trio.SSLStream(sock, tls, server_hostname=name)
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    client = FakeClient(stream, timeout=timeout)
    try:
        yield client
    finally:
        await trio.aclose_forcefully(client.stream)
