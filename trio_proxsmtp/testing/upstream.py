"""FakeUpstream: a scriptable SMTP server that records every byte it receives.

It stands where the real mail server would be, so a test can see exactly what a proxy (or
any SMTP client) sent and control exactly what it is told. The defaults are the common
setup of the behaviour spec (§17)::

    async with FakeUpstream() as up:
        ...  # point the proxy's OutAddress at up.address
        assert up.transactions[0].message == b"Subject: t\\r\\n\\r\\nbody\\r\\n"

Replies can be overridden per verb with a fixed text or a callable; the connection can be
closed (or reset) at chosen points; every reply can be delayed with ``trio.sleep`` so
timeout tests run under a mock clock. Reply keys are the upper-case verb (``"MAIL"``,
``"RCPT"``, ``"DATA"``, ...), :data:`BANNER` for the greeting and :data:`END_OF_DATA` for the
reply to the final dot.

The parser here is deliberately small: it only frames lines (bounded, any bytes) and
recognises the verbs it must answer. It is a test double, not a second SMTP server. It
does not use ``protocol.data`` on purpose: that normalises line endings, while the fake
must record what arrived. Like Postfix it takes a bare LF as a line end, so ``.`` LF also
ends DATA; ``received`` shows which terminator was used.

Modern SMTP, so that a client's (or the proxy's) use of it can be checked:

- TLS: with ``tls_certificate``/``tls_key`` it answers ``STARTTLS`` (RFC 3207; advertised
  while the keywords list it and TLS is not yet on), or with ``implicit_tls=True`` speaks
  TLS from the first byte (RFC 8314). :attr:`Session.tls` tells how, which version, the SNI
  name the client sent and its certificate; ``require_tls`` refuses MAIL in plain text.
- PIPELINING (RFC 2920): while the keywords list it, replies are held until no complete
  command is left in what was read, then written at once, as Postfix does; without it
  every reply is written at once. :attr:`Session.reads`, :attr:`Session.writes` and
  :attr:`Session.reply_groups` (the commands each write answered) count the round trips.
- CHUNKING (RFC 3030): while the keywords list it, ``BDAT n [LAST]`` chunks are read
  byte-exact; :attr:`Transaction.chunks` has their sizes. A chunk's reply key is
  ``"BDAT"``, the LAST one's :data:`END_OF_DATA`; ``ClosePoint.ON_DATA`` closes at a BDAT,
  ``ClosePoint.AFTER_DOT`` once the LAST chunk is read; a BDAT whose size cannot be read
  gets 501 and the connection closed (its end is unknown).
- 8BITMIME and SMTPUTF8 (RFC 6152, 6531): ``BODY=8BITMIME`` / ``SMTPUTF8`` on MAIL are
  refused (555) unless advertised, and with SMTPUTF8 advertised a non-ASCII address
  without it is refused (553); :attr:`Transaction.mail_parameters` has what MAIL declared.
"""

from __future__ import annotations

import contextvars
import enum
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from types import TracebackType
from typing import Final

import attrs
import trio

from trio_proxsmtp.common.tls import server_context
from trio_proxsmtp.protocol.smtp.bdat import BdatSyntaxError, BdatTransfer, parse_bdat

__all__ = [
    "BANNER",
    "CLOSE",
    "DEFAULT_EHLO_KEYWORDS",
    "END_OF_DATA",
    "RESET",
    "ClosePoint",
    "FakeUpstream",
    "Hangup",
    "Responder",
    "Session",
    "TLSInfo",
    "Transaction",
]

BANNER: Final = "BANNER"
"""Key of the greeting in ``replies`` and ``delays``."""
END_OF_DATA: Final = "."
"""Key of the reply to the final ``.`` in ``replies`` and ``delays``."""

DEFAULT_HOSTNAME: Final = "upstream.example"
DEFAULT_BANNER: Final = "220 upstream.example ESMTP"
DEFAULT_SIZE: Final = 10_240_000


def _default_keywords(size: int | None) -> tuple[str, ...]:
    return (
        "PIPELINING",
        *((f"SIZE {size}",) if size is not None else ()),
        "STARTTLS",
        "AUTH PLAIN LOGIN",
        "XCLIENT NAME ADDR PROTO HELO",
        "XFORWARD NAME ADDR PROTO HELO",
        "8BITMIME",
        "BINARYMIME",
        "XEXCH50",
        "CHECKPOINT",
        "DSN",
        "CHUNKING",
    )


DEFAULT_EHLO_KEYWORDS: Final = _default_keywords(DEFAULT_SIZE)
"""The EHLO keywords of docs/behaviour.md §13, in order (the greeting line comes first)."""


class Hangup(enum.Enum):
    """Returned by a responder instead of a reply: end the connection without replying."""

    CLOSE = "close"
    """Close the connection cleanly (FIN)."""
    RESET = "reset"
    """Abort the connection (RST, via SO_LINGER 0)."""


CLOSE: Final = Hangup.CLOSE
RESET: Final = Hangup.RESET


class ClosePoint(enum.Enum):
    """Where the fake closes the connection without replying."""

    AFTER_BANNER = "after-banner"
    ON_MAIL = "on-mail"
    ON_DATA = "on-data"
    AFTER_DOT = "after-dot"


@attrs.define
class Transaction:
    """One message the fake accepted: recorded only after its final dot was answered 250."""

    mail_from: str
    """The reverse path without angle brackets ("" for ``<>``)."""
    rcpt_to: list[str]
    """Accepted recipients only, in order, without angle brackets."""
    data: bytes
    """The bytes between the 354 and the final ``.`` line, exactly as received (stuffed)."""
    message: bytes
    """``data`` with the dot-stuffing removed."""
    session: int
    """Index of the connection in :attr:`FakeUpstream.sessions`."""
    peer: str = ""
    """The address the connection came from ("" for a Unix socket or an in-memory stream):
    with ``TransparentProxy: full`` it is the proxy's client, not the proxy."""
    chunks: list[int] | None = None
    """The sizes of the BDAT chunks it came in, in order; None when it came by DATA (for
    BDAT, ``data`` and ``message`` are the same bytes: BDAT has no stuffing)."""
    mail_parameters: tuple[str, ...] = ()
    """The ESMTP parameters of its MAIL command, as sent (e.g. ``("SMTPUTF8",)``)."""
    tls: bool = False
    """True when the connection was encrypted when the message was sent."""


@attrs.frozen
class TLSInfo:
    """How a connection got TLS and what the client showed (:attr:`Session.tls`)."""

    how: str
    """``"starttls"`` or ``"implicit"``."""
    version: str | None
    """The protocol version, e.g. ``"TLSv1.3"``."""
    cipher: str | None
    server_name: str | None
    """The SNI name the client sent; None when it sent none (as for an IP address)."""
    client_certificate: dict[str, object] | None
    """The client's certificate (``ssl.SSLSocket.getpeercert`` form) when ``tls_client_ca``
    asked for one and it was given."""


@attrs.define(eq=False)
class Session:
    """What one connection did; passed to responder callables so they can decide."""

    index: int
    peer: str
    received: bytearray = attrs.field(factory=bytearray)
    commands: list[bytes] = attrs.field(factory=list)
    helo: str | None = None
    mail_from: str | None = None
    rcpt_to: list[str] = attrs.field(factory=list)
    transactions: list[Transaction] = attrs.field(factory=list)
    closed: bool = False
    mail_parameters: tuple[str, ...] = ()
    tls: TLSInfo | None = None
    """Set once TLS is on (STARTTLS or implicit)."""
    tls_error: str | None = None
    """Why a TLS handshake failed (the connection was then closed)."""
    discarded_after_starttls: bytes = b""
    """Bytes that came in the same read as STARTTLS, after it: dropped, never run."""
    reads: int = 0
    """How many reads brought bytes (after TLS: decrypted reads)."""
    writes: int = 0
    """How many writes of replies were made (the banner's included)."""
    reply_groups: list[list[bytes]] = attrs.field(factory=list)
    """For each write of replies, the commands it answered, in order (``b"."`` for the end
    of DATA); the banner alone is left out. A pipelined MAIL, RCPT, RCPT, DATA answered
    in one write shows as one group of four."""


Responder = Callable[[bytes, Session], "str | bytes | Hangup | None"]
"""A reply override: gets the command line (without CRLF) and the session; returns the
reply text, raw bytes, :data:`CLOSE`/:data:`RESET`, or None for the default reply."""

ReplySpec = str | bytes | Hangup | Responder


class _Closed(Exception):
    """Internal: the connection is over (either side ended it)."""


def reply_bytes(text: str | bytes) -> bytes:
    """Encode a reply: a str has its lines CRLF-terminated; bytes go out verbatim."""
    if isinstance(text, bytes):
        return text
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    return b"".join(line.encode("utf-8") + b"\r\n" for line in lines)


def _reply_code(wire: bytes) -> int:
    head = wire[:3]
    return int(head) if head.isdigit() and len(head) == 3 else 0


def _path(argument: str) -> str:
    """The address of a MAIL FROM:/RCPT TO: argument, without brackets or parameters."""
    argument = argument.strip()
    if argument.startswith("<"):
        end = argument.find(">")
        return argument[1:end] if end != -1 else argument[1:]
    return argument.split(" ", 1)[0] if argument else ""


def _unstuff(data: bytes) -> bytes:
    """Remove dot-stuffing: a line that starts with "." loses that first dot."""
    lines = data.split(b"\n")
    return b"\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _mail_parameters(argument: str) -> tuple[str, ...]:
    """The ESMTP parameters after the path of a MAIL FROM: argument."""
    argument = argument.strip()
    if argument.startswith("<"):
        end = argument.find(">")
        rest = argument[end + 1 :] if end != -1 else ""
    else:
        rest = argument.split(" ", 1)[1] if " " in argument else ""
    return tuple(rest.split())


# The SNI name of the handshake running in this task (the callback runs inside it).
_sni_seen: contextvars.ContextVar[list[str | None]] = contextvars.ContextVar("_sni_seen")


def _record_sni(_obj: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
    seen = _sni_seen.get(None)
    if seen is not None:
        seen.append(name)


class FakeUpstream:
    """A scriptable SMTP server on 127.0.0.1 (or ``::1``, or a Unix socket) port 0.

    Use as ``async with FakeUpstream(...) as up:`` or run :meth:`serve` in your own
    nursery with ``await nursery.start(up.serve)``.

    Args:
        banner: the greeting; any (multi-line) text, e.g. ``"554 go away"``.
        hostname: the name in the default EHLO/HELO replies.
        ehlo_keywords: the EHLO keywords after the greeting line (default: docs/behaviour.md §13).
        replies: per-verb overrides (see the module docstring); values are a reply text,
            raw bytes, :data:`CLOSE`, :data:`RESET` or a :data:`Responder`.
        close_at: point(s) where the connection is closed without a reply.
        delay: seconds to ``trio.sleep`` before every reply; ``delays`` per verb wins.
        size_limit: advertised SIZE and enforced limit (552); None for no limit.
        reject_magic: answer 550 to MAIL/RCPT whose address contains "reject".
        max_line: longest command line accepted (``500`` beyond, then resynchronised).
        host, port: where to listen (port 0: a free port, see :attr:`port`).
        unix_path: listen on this Unix socket instead (removed afterwards).
        on_transaction: called with each recorded transaction (e.g. to print it).
        record: keep every byte, command, session and transaction in memory (for tests);
            False for a long-running sink that only reports through ``on_transaction``.
        tls_certificate, tls_key: PEM files: answer STARTTLS (if "STARTTLS" is among the
            keywords) or, with ``implicit_tls``, speak TLS from the first byte. See
            :mod:`trio_proxsmtp.testing.certs` to make them.
        implicit_tls: TLS from the first byte (RFC 8314); needs the certificate.
        tls_client_ca: ask the client for a certificate and check it against this CA
            file (a client without one is still served).
        require_tls: answer MAIL in plain text with ``530 5.7.0``.
    """

    def __init__(
        self,
        *,
        banner: str | bytes = DEFAULT_BANNER,
        hostname: str = DEFAULT_HOSTNAME,
        ehlo_keywords: Iterable[str] | None = None,
        replies: Mapping[str, ReplySpec] | None = None,
        close_at: ClosePoint | Iterable[ClosePoint] = (),
        delay: float = 0.0,
        delays: Mapping[str, float] | None = None,
        size_limit: int | None = DEFAULT_SIZE,
        reject_magic: bool = True,
        max_line: int = 4096,
        host: str = "127.0.0.1",
        port: int = 0,
        unix_path: str | os.PathLike[str] | None = None,
        on_transaction: Callable[[Transaction], object] | None = None,
        record: bool = True,
        tls_certificate: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        implicit_tls: bool = False,
        tls_client_ca: str | os.PathLike[str] | None = None,
        require_tls: bool = False,
    ) -> None:
        self.banner = banner
        self.hostname = hostname
        self.ehlo_keywords = (
            tuple(ehlo_keywords) if ehlo_keywords is not None else _default_keywords(size_limit)
        )
        self.replies: dict[str, ReplySpec] = {k.upper(): v for k, v in (replies or {}).items()}
        self.close_at = (
            frozenset({close_at}) if isinstance(close_at, ClosePoint) else frozenset(close_at)
        )
        self.delay = delay
        self.delays = {k.upper(): v for k, v in (delays or {}).items()}
        self.size_limit = size_limit
        self.reject_magic = reject_magic
        self.max_line = max_line
        self.host = host
        self.unix_path = os.fspath(unix_path) if unix_path is not None else None
        self.on_transaction = on_transaction
        self.record = record
        self.implicit_tls = implicit_tls
        self.require_tls = require_tls
        self.tls_context: ssl.SSLContext | None = None
        """The server context built from ``tls_certificate``/``tls_key``."""
        if (tls_certificate is None) != (tls_key is None):
            raise ValueError("tls_certificate and tls_key go together")
        if tls_certificate is not None and tls_key is not None:
            context = server_context(os.fspath(tls_certificate), os.fspath(tls_key))
            context.sni_callback = _record_sni
            if tls_client_ca is not None:
                context.verify_mode = ssl.CERT_OPTIONAL
                context.load_verify_locations(cafile=os.fspath(tls_client_ca))
            self.tls_context = context
        if implicit_tls and self.tls_context is None:
            raise ValueError("implicit_tls needs tls_certificate and tls_key")
        self._forgotten = 0  # closed sessions dropped because record is False

        self.received = bytearray()
        """Every byte received, from all connections, in arrival order."""
        self.commands: list[bytes] = []
        """Every command line (without its line ending) from all connections, in order."""
        self.transactions: list[Transaction] = []
        self.accepted = 0
        """Messages answered 250 so far, kept in `transactions` or not (`record`): the
        default reply's "queued as N" is the next number, unique to each message."""
        self.sessions: list[Session] = []
        self.port = port
        """The TCP port (the real one once serving, when 0 was asked for)."""
        self._changed = trio.Event()
        self._stack: AsyncExitStack | None = None

    # -- information -------------------------------------------------------------------

    def offers(self, keyword: str) -> bool:
        """True when the EHLO keywords include ``keyword`` (its first word, any case)."""
        keyword = keyword.upper()
        return any(k.split(" ", 1)[0].upper() == keyword for k in self.ehlo_keywords)

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        return len(self.sessions) + self._forgotten

    @property
    def active_connections(self) -> int:
        """How many connections are still open."""
        return sum(not s.closed for s in self.sessions)

    @property
    def address(self) -> str:
        """Where it listens, in proxsmtpd.conf syntax ("127.0.0.1:PORT", "[::1]:PORT", path)."""
        if self.unix_path is not None:
            return self.unix_path
        return f"{_format_host(self.host)}:{self.port}"

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` is true; it is re-checked whenever anything is recorded.

        Put your own deadline around it (``trio.fail_after``).
        """
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- running -----------------------------------------------------------------------

    async def __aenter__(self) -> FakeUpstream:
        stack = AsyncExitStack()
        nursery = await stack.enter_async_context(background_nursery())
        try:
            await nursery.start(self.serve)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None, "FakeUpstream context exited without being entered"
        return await stack.__aexit__(exc_type, exc, tb)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; ``task_status.started()`` once accepting."""
        listeners = await self._open_listeners()
        try:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                task_status.started()
        finally:
            for listener in listeners:  # synchronously: we are usually being cancelled
                listener.socket.close()
            if self.unix_path is not None:
                with suppress(FileNotFoundError):
                    os.unlink(self.unix_path)

    async def _open_listeners(self) -> list[trio.SocketListener]:
        if self.unix_path is not None:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                await sock.bind(self.unix_path)
                sock.listen(128)
            except BaseException:
                sock.close()
                raise
            return [trio.SocketListener(sock)]
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        return listeners

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError:  # EMFILE and friends: keep serving
                await trio.sleep(0.01)
                continue
            peer = ""
            if self.unix_path is None:
                peer = stream.socket.getpeername()[0]
            nursery.start_soon(self.handle, stream, peer)

    # -- one connection ----------------------------------------------------------------

    async def handle(self, stream: trio.abc.Stream, peer: str = "") -> None:
        """Serve one SMTP session on any Trio stream until it ends.

        The listener uses this for each connection; tests can call it directly with one
        end of ``trio.testing.memory_stream_pair()`` so that delays run under a mock clock
        without real sockets.
        """
        session = Session(index=self.connections, peer=peer)
        self.sessions.append(session)
        self._notify()
        conn = _Connection(self, stream, session)
        try:
            await conn.run()
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            # Close first: a waiter that sees ``closed`` must also see the session gone
            # (record=False) -- no checkpoint may fall between the two.
            try:
                await conn.close()
            finally:
                session.closed = True
                if not self.record:
                    self.sessions.remove(session)
                    self._forgotten += 1
                self._notify()


class _Connection:
    """The command/data loop of one connection."""

    def __init__(self, up: FakeUpstream, stream: trio.abc.Stream, session: Session) -> None:
        self.up = up
        self.transport = stream  # the connection itself, under TLS if any
        self.stream = stream
        self.session = session
        self.buffer = bytearray()
        self.eof = False
        self.reset = False
        self.out = bytearray()  # replies not yet written (PIPELINING)
        self.answered: list[bytes] = []  # the commands they answer
        self.bdat: BdatTransfer | None = None
        self.bdat_error: str | None = None  # the reply of a failed chunk, for the rest
        self.data = bytearray()  # the BDAT message so far

    async def close(self) -> None:
        if self.reset and isinstance(self.transport, trio.SocketStream):
            linger = struct.pack("ii", 1, 0)
            with suppress(OSError):
                self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        try:
            if self.out and not self.reset:
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._flush()
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _flush(self) -> None:
        """Write the held replies in one write."""
        if not self.out:
            return
        wire, self.out = bytes(self.out), bytearray()
        answered, self.answered = self.answered, []
        self.session.writes += 1
        if answered and self.up.record:
            self.session.reply_groups.append(answered)
        await self.stream.send_all(wire)

    async def _receive(self) -> None:
        if self.eof:
            raise _Closed
        await self._flush()  # before waiting for the client, it must have its replies
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            self.eof = True
            raise _Closed
        self.session.reads += 1
        if self.up.record:
            self.session.received += chunk
            self.up.received += chunk
        self.buffer += chunk
        self.up._notify()

    async def _read_line(self) -> bytes | None:
        """The next line including its LF; None when it was too long (and skipped)."""
        skipping = False
        while True:
            idx = self.buffer.find(b"\n")
            if idx != -1:
                line = bytes(self.buffer[: idx + 1])
                del self.buffer[: idx + 1]
                return None if skipping or len(line) > self.up.max_line else line
            if len(self.buffer) > self.up.max_line:
                skipping = True
                self.buffer.clear()
            await self._receive()

    def _resolve(self, key: str, line: bytes, default: str | bytes) -> str | bytes | Hangup:
        """The reply for ``key``: the override (fixed or computed) or ``default``."""
        spec = self.up.replies.get(key)
        result = spec(line, self.session) if callable(spec) else spec
        return default if result is None else result

    def _delay(self, key: str) -> float:
        return self.up.delays.get(key, self.up.delay)

    async def _send(
        self, result: str | bytes | Hangup, delay: float = 0.0, answers: bytes | None = None
    ) -> int:
        """Wait ``delay``, then send ``result`` (or hang up); return the reply code.

        With PIPELINING the reply is held until the next read (see :meth:`_receive`).
        """
        if delay:
            await trio.sleep(delay)
        if isinstance(result, Hangup):
            self.reset = result is RESET
            raise _Closed
        wire = reply_bytes(result)
        self.out += wire
        if answers is not None:
            self.answered.append(answers)
        if not self.up.offers("PIPELINING"):
            await self._flush()
        return _reply_code(wire)

    async def _reply(self, key: str, line: bytes, default: str | bytes) -> int:
        answers = None if key == BANNER else line
        return await self._send(self._resolve(key, line, default), self._delay(key), answers)

    async def _start_tls(self, how: str) -> None:
        """Handshake as the server over the connection; close it if that fails."""
        context = self.up.tls_context
        assert context is not None
        self.stream = trio.SSLStream(self.transport, context, server_side=True)
        seen: list[str | None] = []
        token = _sni_seen.set(seen)
        try:
            await self.stream.do_handshake()
        except trio.BrokenResourceError as exc:
            self.session.tls_error = str(exc.__cause__ or exc)
            self.up._notify()
            raise _Closed from None
        finally:
            _sni_seen.reset(token)
        stream = self.stream
        cipher = stream.cipher()
        self.session.tls = TLSInfo(
            how=how,
            version=stream.version(),
            cipher=cipher[0] if cipher else None,
            server_name=seen[0] if seen else None,
            client_certificate=stream.getpeercert() or None,
        )
        self.up._notify()

    async def _starttls(self, command: bytes) -> None:
        up, session = self.up, self.session
        default = "220 2.0.0 Ready to start TLS"
        if up.tls_context is None:
            default = "454 4.7.0 TLS not available due to local problem"
        elif session.tls is not None:
            default = "554 5.5.1 Error: TLS already active"
        elif command.strip().upper() != b"STARTTLS":
            default = "501 5.5.4 Syntax: STARTTLS"
        if await self._reply("STARTTLS", command, default) != 220 or up.tls_context is None:
            return
        await self._flush()
        session.discarded_after_starttls = bytes(self.buffer)
        self.buffer.clear()
        await self._start_tls("starttls")
        session.helo = None  # RFC 3207: the client starts over with EHLO
        self._clear()

    async def run(self) -> None:
        up = self.up
        if up.implicit_tls:
            await self._start_tls("implicit")
        await self._reply(BANNER, b"", up.banner)
        if ClosePoint.AFTER_BANNER in up.close_at:
            raise _Closed
        while True:
            line = await self._read_line()
            if line is None:
                await self._reply("LONG", b"", "500 5.5.0 Line too long")
                continue
            command = line.rstrip(b"\r\n")
            if up.record:
                self.session.commands.append(command)
                up.commands.append(command)
            up._notify()
            await self._command(command)

    async def _command(self, command: bytes) -> None:
        up, session = self.up, self.session
        text = _decode(command)
        verb = text.split(" ", 1)[0].upper()
        if verb == "EHLO":
            keywords = up.ehlo_keywords
            if session.tls is not None:  # no second STARTTLS
                keywords = tuple(k for k in keywords if k.split(" ")[0].upper() != "STARTTLS")
            lines = [f"250-{up.hostname}", *(f"250-{k}" for k in keywords)]
            lines[-1] = "250 " + lines[-1][4:]
            if await self._reply(verb, command, "\n".join(lines)) // 100 == 2:
                session.helo = text[5:].strip()
                self._clear()
        elif verb == "HELO":
            if await self._reply(verb, command, f"250 {up.hostname}") // 100 == 2:
                session.helo = text[5:].strip()
                self._clear()
        elif verb == "MAIL":
            await self._mail(text, command)
        elif verb == "RCPT":
            await self._rcpt(text, command)
        elif verb == "DATA":
            await self._data(command)
        elif verb == "BDAT" and up.offers("CHUNKING"):
            await self._bdat(text, command)
        elif verb == "STARTTLS":
            await self._starttls(command)
        elif verb == "RSET":
            if await self._reply(verb, command, "250 2.0.0 Ok") // 100 == 2:
                self._clear()
        elif verb == "NOOP":
            await self._reply(verb, command, "250 2.0.0 Ok")
        elif verb == "QUIT":
            await self._reply(verb, command, "221 2.0.0 Bye")
            raise _Closed
        elif verb == "XCLIENT":
            await self._reply(verb, command, f"220 {up.hostname} ESMTP")
        elif verb == "XFORWARD":
            await self._reply(verb, command, "250 2.0.0 Ok")
        elif verb == "AUTH":
            await self._reply(verb, command, "235 2.7.0 Authentication successful")
        else:
            await self._reply(verb, command, "502 5.5.2 Error: command not recognized")

    def _clear(self) -> None:
        self.session.mail_from = None
        self.session.rcpt_to = []
        self.session.mail_parameters = ()
        self.bdat = None
        self.bdat_error = None
        self.data = bytearray()

    def _parameter_error(self, address: str, parameters: tuple[str, ...]) -> str | None:
        """The refusal of MAIL's ESMTP parameters, if any (as Postfix words it)."""
        up = self.up
        names = {p.split("=", 1)[0].upper(): p for p in parameters}
        if "SMTPUTF8" in names and not up.offers("SMTPUTF8"):
            return "555 5.5.4 Unsupported option: SMTPUTF8"
        body = names.get("BODY", "=").split("=", 1)[1].upper()
        if body == "8BITMIME" and not up.offers("8BITMIME"):
            return "555 5.5.4 Unsupported option: BODY=8BITMIME"
        if up.offers("SMTPUTF8") and not address.isascii() and "SMTPUTF8" not in names:
            return "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
        return None

    def _unicode_refused(self, address: str) -> bool:
        return (
            self.up.offers("SMTPUTF8")
            and not address.isascii()
            and not any(p.upper() == "SMTPUTF8" for p in self.session.mail_parameters)
        )

    async def _mail(self, text: str, command: bytes) -> None:
        up, session = self.up, self.session
        if ClosePoint.ON_MAIL in up.close_at:
            raise _Closed
        if not text[4:].upper().lstrip().startswith("FROM:"):
            await self._reply("MAIL", command, "501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        argument = text[text.index(":") + 1 :]
        address = _path(argument)
        parameters = _mail_parameters(argument)
        default = "250 2.1.0 Ok"
        refusal = self._parameter_error(address, parameters)
        if up.require_tls and session.tls is None:
            default = "530 5.7.0 Must issue a STARTTLS command first"
        elif session.mail_from is not None:
            default = "503 5.5.1 Error: nested MAIL command"
        elif refusal is not None:
            default = refusal
        elif up.reject_magic and "reject" in address.lower():
            default = "550 5.1.0 Sender rejected"
        elif up.size_limit is not None and _declared_size(argument) > up.size_limit:
            default = "552 5.3.4 Message size exceeds fixed limit"
        if await self._reply("MAIL", command, default) // 100 == 2:
            session.mail_from = address
            session.rcpt_to = []
            session.mail_parameters = parameters

    async def _rcpt(self, text: str, command: bytes) -> None:
        up, session = self.up, self.session
        if not text[4:].upper().lstrip().startswith("TO:"):
            await self._reply("RCPT", command, "501 5.5.4 Syntax: RCPT TO:<address>")
            return
        address = _path(text[text.index(":") + 1 :])
        default = "250 2.1.5 Ok"
        if session.mail_from is None:
            default = "503 5.5.1 Error: need MAIL command"
        elif up.reject_magic and "reject" in address.lower():
            default = "550 5.1.1 Recipient address rejected"
        elif self._unicode_refused(address):
            default = "553 5.6.7 Must declare SMTPUTF8 to send unicode address"
        if await self._reply("RCPT", command, default) // 100 == 2:
            session.rcpt_to.append(address)

    async def _data(self, command: bytes) -> None:
        up, session = self.up, self.session
        if ClosePoint.ON_DATA in up.close_at:
            raise _Closed
        default = "354 End data with <CR><LF>.<CR><LF>"
        if session.mail_from is None:
            default = "503 5.5.1 Error: need MAIL command"
        elif not session.rcpt_to:
            default = "554 5.5.1 Error: no valid recipients"
        if await self._reply("DATA", command, default) // 100 != 3:
            return
        data, too_big = await self._read_data()
        if ClosePoint.AFTER_DOT in up.close_at:
            raise _Closed
        default = f"250 2.0.0 Ok: queued as {up.accepted + 1}"
        if too_big:
            default = "552 5.3.4 Message size exceeds fixed limit"
        transaction = Transaction(
            mail_from=session.mail_from or "",
            rcpt_to=list(session.rcpt_to),
            data=data,
            message=_unstuff(data),
            session=session.index,
            peer=session.peer,
            mail_parameters=session.mail_parameters,
            tls=session.tls is not None,
        )
        result = self._resolve(END_OF_DATA, b".", default)
        await trio.sleep(self._delay(END_OF_DATA))
        # Record before the 250 goes out: whoever sees the 250 must find the transaction.
        if not isinstance(result, Hangup) and _reply_code(reply_bytes(result)) == 250:
            self._record(transaction)
        self._clear()
        await self._send(result, answers=b".")

    async def _bdat(self, text: str, command: bytes) -> None:
        """One BDAT chunk: read exactly its bytes whatever the reply, then answer it."""
        up, session = self.up, self.session
        try:
            chunk = parse_bdat(text[4:])
        except BdatSyntaxError:
            # The chunk's end is unknown: the stream cannot be followed any further.
            await self._reply("BDAT", command, "501 5.5.4 Syntax: BDAT count [LAST]")
            raise _Closed from None
        if ClosePoint.ON_DATA in up.close_at:
            raise _Closed
        if self.bdat is None:
            self.bdat = BdatTransfer(up.size_limit or 0)
        transfer = self.bdat
        transfer.begin(chunk)
        body = bytearray()
        while transfer.in_chunk:
            if not self.buffer:
                await self._receive()
                continue
            data, self.buffer = bytes(self.buffer), bytearray()
            body += transfer.feed(data)
            self.buffer += transfer.take_remaining()
        self.data += body
        if self.bdat_error is None:
            if session.mail_from is None:
                self.bdat_error = "503 5.5.1 Error: need MAIL command"
            elif not session.rcpt_to:
                self.bdat_error = "554 5.5.1 Error: no valid recipients"
        if not chunk.last:
            default = self.bdat_error or f"250 2.0.0 Ok: {chunk.size} bytes"
            await self._reply("BDAT", command, default)
            return
        if ClosePoint.AFTER_DOT in up.close_at:
            raise _Closed
        default = self.bdat_error or f"250 2.0.0 Ok: queued as {up.accepted + 1}"
        if self.bdat_error is None and transfer.too_big:
            default = "552 5.3.4 Message size exceeds fixed limit"
        message = bytes(self.data)
        transaction = Transaction(
            mail_from=session.mail_from or "",
            rcpt_to=list(session.rcpt_to),
            data=message,
            message=message,
            session=session.index,
            peer=session.peer,
            chunks=list(transfer.chunks),
            mail_parameters=session.mail_parameters,
            tls=session.tls is not None,
        )
        result = self._resolve(END_OF_DATA, command, default)
        await trio.sleep(self._delay(END_OF_DATA))
        if not isinstance(result, Hangup) and _reply_code(reply_bytes(result)) == 250:
            self._record(transaction)
        self._clear()
        await self._send(result, answers=command)

    def _record(self, transaction: Transaction) -> None:
        self.up.accepted += 1
        if self.up.record:
            self.session.transactions.append(transaction)
            self.up.transactions.append(transaction)
        self.up._notify()
        if self.up.on_transaction is not None:
            self.up.on_transaction(transaction)

    async def _read_data(self) -> tuple[bytes, bool]:
        """Read up to the final ``.`` line; return (data, exceeded size_limit)."""
        limit = self.up.size_limit
        data = bytearray()
        too_big = False
        at_line_start = True
        while True:
            idx = self.buffer.find(b"\n")
            if idx == -1:
                if len(self.buffer) > self.up.max_line:  # a long line: cannot be the dot
                    chunk = bytes(self.buffer)
                    self.buffer.clear()
                    at_line_start = False
                else:
                    await self._receive()
                    continue
            else:
                chunk = bytes(self.buffer[: idx + 1])
                del self.buffer[: idx + 1]
                if at_line_start and chunk in (b".\r\n", b".\n"):
                    return bytes(data), too_big
                at_line_start = True
            if limit is not None and len(data) + len(chunk) > limit:
                too_big = True
            if not too_big:
                data += chunk


def _declared_size(argument: str) -> int:
    for word in argument.upper().split():
        if word.startswith("SIZE=") and word[5:].isdigit():
            return int(word[5:])
    return 0


@asynccontextmanager
async def background_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for background services, cancelled when the body ends.

    An exception from the body comes out as itself rather than wrapped in a one-member
    ExceptionGroup, so ``pytest.raises`` around the block behaves as users expect.
    """
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as error:
                body_error = error
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if body_error is not None and group.exceptions == (body_error,):
            raise body_error from None
        raise
