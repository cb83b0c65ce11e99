"""The upstream side of a connection: every exchange with the next server (reaching it,
the PROXY header and the TLS handshake are relay/upstream_connect.py).

`Upstream` owns the upstream stream and its reply parser.  What goes upstream and expects
replies goes through `exchange` (or `command`, a group of one): a group of items in one
write, then one complete reply per item, in order (PIPELINING: relay/perform.py).  TLS,
after STARTTLS (OutTLS: may, encrypt) or from the first byte (implicit), is `start_tls`,
between exchanges.  Keepalives (NOOP) are exchanges too.  Every wait runs under TimeOut, a
whole reply (the banner too) under ReplyTimeOut; every failure is an `UpstreamFailure`,
which the client sees as 421 with the real error in the log (B13).  It reads its
`UpstreamSettings`, never the configuration."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.common.nursery import single_error
from trio_proxsmtp.common.tls_socket import TLS_STREAMS
from trio_proxsmtp.common.trace import show
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.protocol.smtp.reply_parser import ReplyParser
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.fast_io import FastPath
from trio_proxsmtp.relay.settings import OutTLSMode, UpstreamSettings
from trio_proxsmtp.relay.tls_sessions import sessions_for
from trio_proxsmtp.relay.tls_streams import cipher_name, closed_without_notify
from trio_proxsmtp.relay.upstream_connect import (
    Opener,
    UpstreamFailure,
    connect_upstream,
    open_upstream,
    proxy_header,
    relay_name,
    server_hostname,
    tls_handshake,
)

__all__ = ["Opener", "Outgoing", "Upstream", "UpstreamFailure"]

RECEIVE_SIZE = 64 * 1024


def _disconnected(exc: Exception) -> UpstreamFailure:
    """The failure for a stream error (`BrokenResourceError`, `ClosedResourceError`)."""
    detail = "" if closed_without_notify(exc) else f": {exc}"  # (TLS: a close, no reset)
    return UpstreamFailure(f"server disconnected unexpectedly{detail}", "closed the connection")


@attrs.frozen
class Outgoing:
    """Bytes for the upstream; `trace` is what the protocol trace shows (None: nothing)."""

    data: bytes
    trace: str | None = None


NOOP = Outgoing(b"NOOP\r\n", "NOOP")


class Upstream:
    """Owns the upstream stream; see the module docstring."""

    metrics: Metrics = NULL_METRICS  # bytes, round trips, TLS (set by the connection)

    def __init__(
        self,
        settings: UpstreamSettings,
        info: ClientInfo,
        log: logging.LoggerAdapter[logging.Logger],
        opener: Opener | None = None,
    ) -> None:
        self.settings = settings
        self._opener = opener or functools.partial(open_upstream, settings, info, log)
        self.info = info
        self.log = log
        self.trace = log.isEnabledFor(logging.DEBUG)
        self.stream: trio.abc.Stream | None = None
        self.address = ""  # SERVER in the filter's environment
        self.relay = ""  # the peer actually connected to (host:port or path): relay= in logs
        self.replies = ReplyParser()
        self.activity = trio.current_time()  # the last byte sent or received
        self.tls = False  # the upstream stream is TLS (OutTLS: implicit, or after STARTTLS)
        self._ticket_pending = False  # a new TLS 1.3 session: kept at `aclose`
        self._fast = FastPath()  # try the socket call before waiting (fast_io.py)
        # `activity` is kept up to date only for KeepAlives (a clock read per I/O saved).
        self._keepalives = settings.keep_alives > 0

    # -- the one place where commands go up and replies come back -----------------------

    async def exchange(
        self, outgoing: Sequence[Outgoing], replies: int | None = None
    ) -> list[Reply]:
        """Send `outgoing` in one write, then read `replies` complete replies (one per item
        unless told otherwise: the banner is zero items and one reply), in order."""
        if outgoing:
            if self.trace:
                for item in outgoing:
                    if item.trace is not None:
                        self.log.debug("SERVER > %s", item.trace)
            await self.send(b"".join(item.data for item in outgoing))
        count = len(outgoing) if replies is None else replies
        started = trio.current_time() if self.metrics.enabled and outgoing else None
        answers = [await self._read_reply() for _ in range(count)]
        if started is not None:
            self.metrics.upstream_round_trip(trio.current_time() - started)
        return answers

    async def command(self, item: Outgoing) -> Reply:
        """A group of one: `exchange([item])[0]`, without the lists (once per command)."""
        if self.trace and item.trace is not None:
            self.log.debug("SERVER > %s", item.trace)
        await self.send(item.data)
        if not self.metrics.enabled and not self.trace:
            # `_read_reply` inlined (once per command): a coroutine less per reply.
            replies = self.replies
            reply = replies.next_reply()
            if reply is None:
                reply = await self._wait_reply(replies)
            return reply
        started = trio.current_time()
        reply = await self._read_reply()
        self.metrics.upstream_round_trip(trio.current_time() - started)
        return reply

    async def send(self, data: bytes) -> None:
        """Write bytes that expect no reply of their own (the body of a message)."""
        assert self.stream is not None
        try:
            sent = await self._fast.send(self.stream, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _disconnected(exc) from exc
        if sent == len(data):
            if self._keepalives:
                self.activity = trio.current_time()
            if self.metrics.enabled:
                self.metrics.bytes_sent("upstream", sent)
            return
        with trio.move_on_after(self.settings.timeout) as scope:
            try:
                await self.stream.send_all(data[sent:] if sent else data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _disconnected(exc) from exc
        if scope.cancelled_caught:
            raise UpstreamFailure("network operation timed out: writing to server", "timed out")
        if self._keepalives:
            self.activity = trio.current_time()
        self.metrics.bytes_sent("upstream", len(data))

    async def _read_reply(self) -> Reply:
        replies = self.replies
        reply = replies.next_reply()
        if reply is None:
            reply = await self._wait_reply(replies)
        if self.trace:
            for line in reply.to_bytes().splitlines():
                self.log.debug("SERVER < %s", show(line))
        return reply

    async def _wait_reply(self, replies: ReplyParser) -> Reply:
        """Read until `replies` has a complete reply: the whole reply, however it is
        dribbled, within ReplyTimeOut, and every read within TimeOut (one scope per read).
        The clock is read only once a reply takes more than the first read that does not
        wait (most do not: four clock reads per message saved, bench/calls.py)."""
        stream = self.stream
        assert stream is not None
        settings = self.settings
        deadline = math.inf  # set with `now` at the first need
        now = 0.0
        # The first read follows what was just sent: the answer is not there yet, but
        # usually is once the other tasks have had their turn (FastPath.receive, `later`).
        later = True
        try_fast = settings.reply_timeout > 0
        while True:
            fast: bytes | None = None
            if try_fast:
                try:
                    fast = await self._fast.receive(stream, RECEIVE_SIZE, later=later)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise _disconnected(exc) from exc
            if fast is not None:
                data = fast
            else:
                if deadline == math.inf:
                    now = trio.current_time()
                    deadline = now + settings.reply_timeout
                idle = now + settings.timeout
                with trio.CancelScope(deadline=min(idle, deadline)) as scope:
                    try:
                        data = await self._fast.receive_waiting(stream, RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        raise _disconnected(exc) from exc
                if scope.cancelled_caught:
                    what = "a whole reply (ReplyTimeOut)" if deadline < idle else "server"
                    raise UpstreamFailure(
                        f"network operation timed out: waiting for {what}", "timed out"
                    )
            if not data:
                raise UpstreamFailure("server disconnected unexpectedly", "closed the connection")
            if self._keepalives:
                self.activity = trio.current_time()
            if self.metrics.enabled:
                self.metrics.bytes_received("upstream", len(data))
            replies.feed(data)
            reply = replies.next_reply()
            if reply is not None:
                return reply
            # A part of a reply: read on, the deadline stands.
            now = trio.current_time()
            if deadline == math.inf:
                deadline = now + settings.reply_timeout
            try_fast = deadline > now
            later = False

    def keepalives(self) -> contextlib.AbstractAsyncContextManager[None]:
        """KeepAlives for a phase (see `_keepalives_on`); nothing when they are off."""
        if not self._keepalives:
            return contextlib.nullcontext()
        return self._keepalives_on()

    @asynccontextmanager
    async def _keepalives_on(self) -> AsyncIterator[None]:
        """KeepAlives: NOOP upstream whenever it has been quiet that long (B24: also while
        the filter runs).  When the phase ends normally, an exchange in progress is finished
        (shielded) so that no half-read reply is left behind; it is bounded by ReplyTimeOut.
        When the phase ends by an error or a cancellation (client gone, shutdown) the
        connection is over: the shield is dropped and the exchange ends at once."""
        interval = self.settings.keep_alives
        shield = trio.CancelScope(shield=True)

        async def noop_loop() -> None:
            nonlocal shield
            while True:
                await trio.sleep_until(self.activity + interval)
                if trio.current_time() < self.activity + interval:
                    continue
                with shield:
                    await self.command(NOOP)
                shield = trio.CancelScope(shield=True)

        with single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(noop_loop)
                try:
                    yield
                except BaseException:
                    shield.shield = False
                    raise
                nursery.cancel_scope.cancel()

    # -- connecting (relay/upstream_connect.py) ---------------------------------------

    async def connect(self) -> None:
        """Open the stream under TimeOut (OutProxyProtocol: the PROXY header first), and for
        OutTLS: implicit the handshake, before the banner."""
        try:
            self.stream, self.address = await connect_upstream(
                self._opener, self.settings, self.info
            )
        except UpstreamFailure as exc:
            if exc.connect is not None:
                self.metrics.upstream_connect_failed(exc.connect)
            raise
        self.relay = relay_name(self.stream, self.address)
        self.log.debug("SERVER connected to: %s", self.relay)
        header = proxy_header(self.settings, self.info)
        if header is not None:
            self.log.debug("SERVER > PROXY header (%d bytes)", len(header))
            await self.send(header)
        self.activity = trio.current_time()
        if self.settings.tls is OutTLSMode.IMPLICIT:
            await self.start_tls()  # RFC 8314: before the banner

    def server_hostname(self) -> str | None:
        """The name checked in the next server's certificate (upstream_connect.py)."""
        return server_hostname(self.settings, self.address)

    async def start_tls(self) -> None:
        """The TLS handshake with the next server over the current stream (implicit TLS, or
        after its 220 to our STARTTLS), under TimeOut; never falls back to plain text."""
        assert self.stream is not None
        if self.replies.buffered_size:
            # Bytes after the 220 and before the handshake: an injection attempt.
            raise UpstreamFailure(
                "SERVER: sent data after its reply to STARTTLS", "TLS failure", "4.7.0"
            )
        context = self.settings.tls_context
        assert context is not None
        name = self.server_hostname()
        sessions = sessions_for(context)
        try:
            stream = await tls_handshake(
                self.stream, self.settings, name, self.address, sessions.get(name, self.relay)
            )
        except UpstreamFailure:
            sessions.forget(name, self.relay)
            self.metrics.tls_handshake_failed("upstream")
            self.metrics.upstream_connect_failed("tls")
            raise
        self.stream = stream
        self.tls = True
        self.activity = trio.current_time()
        self.metrics.tls_started("upstream")
        resumed = stream.session_reused
        self.log.info(
            "SERVER TLS established: %s, %s (%s%s)",
            stream.version(),
            cipher_name(stream),
            "verified" if context.verify_mode == ssl.CERT_REQUIRED else "not verified",
            ", resumed" if resumed else "",
        )
        # A new session is kept for the next connection there (relay/tls_sessions.py):
        # under TLS 1.2 now, under 1.3 at `aclose` (its ticket comes with the replies).  A
        # resumed one is offered again as it is (reading `session` costs a copy, 0.14 ms):
        # should the server decline it, the full handshake then brings a new one.
        if not resumed:
            if stream.version() == "TLSv1.3":
                self._ticket_pending = True
            else:
                sessions.keep(name, self.relay, stream.session, stream.version())

    async def aclose(self) -> None:
        stream = self.stream
        if stream is None:
            return
        if self._ticket_pending and isinstance(stream, TLS_STREAMS):
            self._ticket_pending = False
            context = self.settings.tls_context
            assert context is not None
            sessions_for(context).keep(
                self.server_hostname(), self.relay, stream.session, stream.version()
            )
        await stream.aclose()
