"""The client side of a connection: its stream, its unread bytes, and their framing.

`ClientChannel` is the only owner of the client stream (swapped for a TLS stream after
STARTTLS) and of the `ClientReader` buffer.  It reads the next command line, a DATA body or
a refused BDAT chunk as the session's actions choose (the framing itself is sans-IO, in
`protocol/smtp/reader.py`), sends our replies, and while nobody reads the client (filter, replay)
watches for it leaving.  Every read and write runs under TimeOut; a whole command line
under CommandTimeOut (SessionTimeOut while waiting for one), a message under MinDataRate,
all shortened under stress (deadlines.py).
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import trio

from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.common.nursery import single_error
from trio_proxsmtp.common.tls_socket import TLS_STREAMS, SocketTLSStream
from trio_proxsmtp.common.trace import show
from trio_proxsmtp.protocol.session.actions import Action
from trio_proxsmtp.protocol.smtp.lines import LineTooLong
from trio_proxsmtp.protocol.smtp.reader import (
    Body,
    Chunk,
    ClientReader,
    Line,
    NeedData,
    Skipped,
    TlsBoundary,
)
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.relay.client_endings import ClientGone, ClientTimeout, Drained, stream_gone
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.deadlines import ClientDeadlines
from trio_proxsmtp.relay.departure import SocketPeek, TLSPeek
from trio_proxsmtp.relay.fast_io import FastPath
from trio_proxsmtp.relay.tls_streams import cipher_name, closed_without_notify, tls_stream

__all__ = ["ClientChannel", "ClientGone", "ClientTimeout", "Drained"]

RECEIVE_SIZE = 64 * 1024
# Pipelined client input kept while the client is not being read (filter, replay).
MAX_PENDING_INPUT = 64 * 1024


def _never() -> bool:
    return False


class ClientChannel:
    """Owns the client stream and its buffer; see the module docstring."""

    metrics: Metrics = NULL_METRICS  # bytes in and out, TLS (set by the connection)

    def __init__(
        self,
        stream: trio.abc.Stream,
        info: ClientInfo,
        timeout: float,
        log: logging.LoggerAdapter[logging.Logger],
        deadlines: ClientDeadlines | None = None,
    ) -> None:
        self.stream = stream
        self.info = info
        self.timeout = timeout
        self.deadlines = deadlines or ClientDeadlines(timeout)
        self.log = log
        self.trace = log.isEnabledFor(logging.DEBUG)
        self.reader = ClientReader()
        self.eof = False  # the watcher (or the peek) saw the client's end of file
        self.left = False  # ... and it meant the client is gone (not a half-close)
        # Whether PIPELINING was offered to this client (set by the connection).
        self.pipelining_offered: Callable[[], bool] = _never
        self._draining = False
        self._idle_scope: trio.CancelScope | None = None
        self._fast = FastPath()  # try the socket call before waiting (fast_io.py)
        self._peek: SocketPeek | TLSPeek | None = None  # for has_left (departure.py)
        self._on_left: Callable[[], None] | None = None  # the watch under way (`watch`)
        # The client's departure can be seen on its socket (`has_left`) rather than by a
        # watcher: a plain socket stream, or TLS on one (`start_tls`).
        self.peekable = info.socket is not None and isinstance(stream, trio.SocketStream)

    # -- reading ------------------------------------------------------------------------

    def stop_idle(self) -> None:
        """Shutdown: a wait for the next command ends now (`Drained`), one to come at once."""
        self._draining = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    async def next_command(self) -> bytes | LineTooLong:
        """The next command line; `Drained` if shutdown comes first and nothing is buffered.
        The whole line must arrive within CommandTimeOut (and the session's deadline)."""
        ready: float | None = None  # when a read was first needed (a buffered line: never)
        deadlines = self.deadlines
        while True:
            if self._draining and self.reader.buffered_size == 0:
                raise Drained()
            event = self.reader.next_event()
            if isinstance(event, Line):
                return event.data
            if isinstance(event, LineTooLong):
                return event
            assert isinstance(event, NeedData), event
            if self.eof:
                raise ClientGone("closed the connection")
            first = ready is None
            if ready is None:
                ready = trio.current_time()
            deadline, name = deadlines.command_deadline(ready)
            silent = first and not self.reader.buffered_size
            # (TimeOut: a call only under stress, not in the usual case)
            timeout = deadlines.idle() if deadlines.stress.on else deadlines.timeout
            if silent and deadline >= ready + timeout:
                # CommandTimeOut no tighter than TimeOut (its default, docs/behaviour.md
                # §8.1): TimeOut ends this silence a moment later, logged "client idle".
                deadline = math.inf
            # The answer to our reply is nearly always there after one trip through the
            # run queue: read it without the drain scope, which only a wait needs.
            data = await self._receive_at_once(answer=True) if first and deadline > ready else None
            if data is None:
                try:
                    with trio.CancelScope() as idle:
                        self._idle_scope = idle
                        if self._draining:
                            idle.cancel()
                        data = await self.receive(deadline, name, tried=first)
                finally:
                    self._idle_scope = None
                if idle.cancelled_caught:
                    raise Drained()
            if not data:
                raise ClientGone("closed the connection")
            self.reader.feed(data)

    async def read_message(
        self, action: Action, deliver: Callable[[bytes, bool], Awaitable[None]]
    ) -> int:
        """Pass the client's message, un-stuffed, to `deliver(body, done)` up to
        <CRLF>.<CRLF>; what follows stays buffered. Returns the message's size.
        The client must keep up MinDataRate (deadlines.py)."""
        self.reader.follow(action)
        deadline = self.deadlines.data_start()
        first = True  # the first read answers our 354
        while True:
            event = self.reader.next_event()
            if isinstance(event, Body):
                await deliver(event.data, event.done)
                if event.done:
                    return self.reader.message_size
                continue
            data = await self.receive(deadline, "MinDataRate", answer=first)
            first = False
            if not data:
                raise ClientGone("unexpected end of data from client")
            deadline = self.deadlines.data_read(deadline, len(data))
            self.reader.feed(data)

    async def read_chunk(self, action: Action, deliver: Callable[[bytes], Awaitable[None]]) -> None:
        """Pass the bytes of a BDAT chunk, exactly as sent, to `deliver`; what follows the
        chunk stays buffered (the next command)."""
        self.reader.follow(action)
        while True:
            event = self.reader.next_event()
            if isinstance(event, Chunk):
                if event.data:
                    await deliver(event.data)
                if event.done:
                    return
                continue
            data = await self.receive()
            if not data:
                raise ClientGone("unexpected end of data from client")
            self.reader.feed(data)

    async def skip(self, action: Action) -> None:
        """Discard the chunk of a refused BDAT: its bytes are never commands."""
        self.reader.follow(action)
        deadline = self.deadlines.data_start()
        while not isinstance(self.reader.next_event(), Skipped):
            data = await self.receive(deadline, "MinDataRate")
            if not data:
                raise ClientGone("closed the connection")
            deadline = self.deadlines.data_read(deadline, len(data))
            self.reader.feed(data)

    async def _receive_at_once(self, *, answer: bool = False) -> bytes | None:
        """The bytes waiting, or None if a read would block (fast_io.FastPath.receive).
        `answer`: the first read after our reply, which the client has not had time to
        answer yet: the other tasks run first (`later`)."""
        try:
            fast = await self._fast.receive(self.stream, RECEIVE_SIZE, later=answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise stream_gone(exc) from exc
        if fast is not None and self.metrics.enabled:
            self.metrics.bytes_received("client", len(fast))
        return fast

    async def receive(
        self,
        deadline: float = math.inf,
        record: str = "",
        *,
        answer: bool = False,
        tried: bool = False,
    ) -> bytes:
        """One read, under TimeOut and the deadline of the record it belongs to (one
        cancel scope per read, as with TimeOut alone).  `answer`: see `_receive_at_once`;
        `tried`: the caller's `_receive_at_once` just found nothing: wait at once."""
        deadlines = self.deadlines
        now = trio.current_time()
        idle = now + (deadlines.idle() if deadlines.stress.on else deadlines.timeout)
        limit = idle if idle < deadline else deadline
        if limit > now and not tried:
            fast = await self._receive_at_once(answer=answer)
            if fast is not None:
                return fast
        stressed = deadlines.stress_timeout
        waiting = deadlines.stress.waiting
        with trio.CancelScope(deadline=limit) as scope:
            if stressed > 0:
                waiting[scope] = now + stressed  # stress coming meanwhile cuts this wait
            try:
                data = await self._fast.receive_waiting(self.stream, RECEIVE_SIZE)
                if self.metrics.enabled:
                    self.metrics.bytes_received("client", len(data))
                return data
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise stream_gone(exc) from exc
            finally:
                if stressed > 0:
                    del waiting[scope]
        assert scope.cancelled_caught
        if scope.deadline < limit:
            raise ClientTimeout("StressTimeOut exceeded")
        if deadline < idle:
            raise ClientTimeout(f"{record} exceeded")
        raise ClientTimeout("client idle")

    # -- writing ------------------------------------------------------------------------

    async def send(self, reply: Reply) -> None:
        data = reply.to_bytes()
        if self.trace:
            for line in data.splitlines():
                self.log.debug("CLIENT > %s", show(line))
        try:
            sent = await self._fast.send(self.stream, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise stream_gone(exc) from exc
        if sent < len(data):
            with trio.move_on_after(self.timeout) as scope:
                try:
                    await self.stream.send_all(data[sent:] if sent else data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise stream_gone(exc) from exc
            if scope.cancelled_caught:
                raise ClientGone("timed out writing to the client")
        if self.metrics.enabled:
            self.metrics.bytes_sent("client", len(data))

    async def say_goodbye(self, reply: Reply) -> None:
        """Best effort: the client may be gone already."""
        with trio.CancelScope(shield=True), trio.move_on_after(5), suppress(ClientGone):
            await self.send(reply)

    # -- TLS ----------------------------------------------------------------------------

    async def start_tls(self, action: Action | None, context: ssl.SSLContext) -> None:
        """RFC 3207 after our 220: cross the TLS boundary, then the handshake.  With no
        action: TLS from the first byte (ListenTLS, RFC 8314), before the banner."""
        if action is not None:
            boundary = self.reader.follow(action)
            assert isinstance(boundary, TlsBoundary)
            if boundary.discarded:
                # Plain text sent after STARTTLS, before the handshake: never run it as
                # commands of the TLS session (the STARTTLS command injection attack).
                self.log.warning("discarded %d bytes sent right after STARTTLS", boundary.discarded)
        # Our close sends a close_notify; the client's is not required (tls_streams.py).
        stream = tls_stream(self.stream, context, server_side=True)
        with trio.move_on_after(self.timeout) as scope:
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.metrics.tls_handshake_failed("client")
                raise ClientGone(f"TLS handshake failed: {exc.__cause__ or exc}") from exc
        if scope.cancelled_caught:
            self.metrics.tls_handshake_failed("client")
            raise ClientGone("TLS handshake timed out")
        self.stream = stream
        # TLS on the socket is peeked at through OpenSSL (departure.py `TLSPeek`); trio's
        # TLS on another stream is watched.
        if self._peek is not None:
            self._peek.detach()
        self._peek = TLSPeek(stream) if isinstance(stream, SocketTLSStream) else None
        self.peekable = self._peek is not None
        self.metrics.tls_started("client")
        self.log.info("TLS established: %s, %s", stream.version(), cipher_name(stream))

    def tls_details(self) -> tuple[str | None, str | None]:
        """The TLS version and cipher of the client connection (None, None in clear)."""
        stream = self.stream
        if not isinstance(stream, TLS_STREAMS):
            return None, None
        return stream.version(), cipher_name(stream)

    # -- the client leaving -------------------------------------------------------------

    def has_left(self) -> bool:
        """Whether the client has left: its end of stream came before its message was
        answered, whatever it pipelined before (QUIT included: docs/behaviour.md §5), but
        for a half-close (`_ended`).  A peek at a plain socket (departure.py); a stream
        that is not is watched."""
        if self.eof or not self.peekable:
            return self.left  # (not peekable: watched instead, `watch`)
        peek = self._peek
        if peek is None:
            assert self.info.socket is not None
            peek = self._peek = SocketPeek(self.info.socket)
        if peek.left(self.reader, self.metrics, keep=MAX_PENDING_INPUT, size=RECEIVE_SIZE):
            self._ended(usable=peek.usable)
        return self.left

    def _ended(self, *, usable: bool = True) -> None:
        """The client's end of stream is here.  It left, unless it is a half-close: a
        client offered PIPELINING sent QUIT with its message's end, and waits for the
        replies (RFC 2920; docs/behaviour.md §11.20); `usable`: our replies can still go
        (under TLS, only after a close_notify)."""
        self.eof = True
        self.left = not (usable and self.pipelining_offered() and self.reader.quit_with_end())
        if not self.left:
            self.log.debug("client half-closed after a QUIT pipelined with its message's end")

    @asynccontextmanager
    async def watch(self, on_left: Callable[[], None]) -> AsyncIterator[None]:
        """While the client is not being read (filter, replay): notice it leaving at once.

        Bytes it pipelines meanwhile are kept (bounded) for the next command.  End of file
        means the client left, whatever it pipelined before (QUIT included: it never saw
        the reply, and will send the message again): `on_left` is called (it cancels the
        connection, so the message is not delivered; docs/behaviour.md §5); but for a
        half-close after a QUIT pipelined with the message's end (`_ended`, §11.20).
        """

        async def watch() -> None:
            while self.reader.buffered_size < MAX_PENDING_INPUT and not self.eof:
                usable = True  # a clean end (in clear, or after a close_notify): replies can go
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    data, usable = b"", False  # after a bare end under TLS, the stream is broken
                    if not closed_without_notify(exc):
                        self.reader.discard_buffered()  # a reset
                if data:
                    if self.metrics.enabled:
                        self.metrics.bytes_received("client", len(data))
                    self.reader.feed(bytes(data))
                    continue
                self._ended(usable=usable)
                if not self.left:
                    break  # a half-close: it waits for its replies
                pending = self.reader.buffered_size
                after = f" (after pipelining {pending} bytes)" if pending else ""
                self.log.info("client disconnected before its message was answered%s", after)
                (self._on_left or on_left)()  # the innermost watch's
                return
            await trio.sleep_forever()

        if self.eof or self._on_left is not None:  # gone, or nested (a message's end
            outer = self._on_left  # under TLS, perform.py): no second reader
            self._on_left = on_left if outer is not None else None
            yield
            self._on_left = outer
            return
        self._on_left = on_left
        try:
            with single_error():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    yield
                    nursery.cancel_scope.cancel()
        finally:
            self._on_left = None

    async def aclose(self) -> None:
        if self._peek is not None:
            self._peek.detach()
            self._peek = None
        # (TLS: a close_notify goes first, under the connection's close deadline.)
        await self.stream.aclose()
