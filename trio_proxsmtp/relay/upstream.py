"""The upstream side of a connection: connecting, and every exchange with the next server.

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
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from trio_proxsmtp.common.address import IP_TRANSPARENT, AddressKind, format_host
from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.common.nursery import single_error
from trio_proxsmtp.common.trace import show
from trio_proxsmtp.protocol.errors import RemoteError
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.protocol.smtp.reply_parser import ReplyParser
from trio_proxsmtp.relay.client_info import ClientInfo, NoOriginalDestination
from trio_proxsmtp.relay.endings import Ending, upstream_unavailable
from trio_proxsmtp.relay.fast_io import FastPath
from trio_proxsmtp.relay.settings import OutTLSMode, TransparentMode, UpstreamSettings

__all__ = ["Outgoing", "Upstream", "UpstreamFailure"]

RECEIVE_SIZE = 64 * 1024


class UpstreamFailure(Ending, RemoteError):
    """The upstream could not be reached, went away, timed out or broke the protocol; the
    client is told 421 with `reason` (the real error is the message, for the log)."""

    def __init__(self, message: str, reason: str, status: str = "4.4.1") -> None:
        super().__init__(message, upstream_unavailable(reason, status))
        self.reason = reason  # the short form the client sees in its 421
        self.status = status  # the enhanced status code of that 421 (4.7.0 for TLS)
        self.ended = f"upstream {reason}"


def _disconnected(exc: Exception) -> UpstreamFailure:
    """The failure for a stream error (`BrokenResourceError`, `ClosedResourceError`)."""
    return UpstreamFailure(f"server disconnected unexpectedly: {exc}", "closed the connection")


@attrs.frozen
class Outgoing:
    """Bytes for the upstream; `trace` is what the protocol trace shows (None: nothing)."""

    data: bytes
    trace: str | None = None


NOOP = Outgoing(b"NOOP\r\n", "NOOP")

# Opens the upstream stream and names it (SERVER for the filter): tests pass a memory stream.
Opener = Callable[[], Awaitable[tuple[trio.abc.Stream, str]]]


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
        self._opener = opener or self._open
        self.info = info
        self.log = log
        self.trace = log.isEnabledFor(logging.DEBUG)
        self.stream: trio.abc.Stream | None = None
        self.address = ""  # SERVER in the filter's environment
        self.relay = ""  # the peer actually connected to (host:port or path): relay= in logs
        self.replies = ReplyParser()
        self.activity = trio.current_time()  # the last byte sent or received
        self.tls = False  # the upstream stream is TLS (OutTLS: implicit, or after STARTTLS)
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
        if not self.metrics.enabled:
            return await self._read_reply()
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
        dribbled, within ReplyTimeOut, and every read within TimeOut (one scope per read)."""
        assert self.stream is not None
        now = trio.current_time()
        deadline = now + self.settings.reply_timeout
        # The first read follows what was just sent: the answer is not there yet, but
        # usually is once the other tasks have had their turn (FastPath.receive, `later`).
        later = True
        while True:
            idle = now + self.settings.timeout
            fast: bytes | None = None
            try:
                if deadline > now:
                    fast = await self._fast.receive(self.stream, RECEIVE_SIZE, later=later)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _disconnected(exc) from exc
            if fast is not None:
                data = fast
            else:
                with trio.CancelScope(deadline=min(idle, deadline)) as scope:
                    try:
                        data = await self._fast.receive_waiting(self.stream, RECEIVE_SIZE)
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
            self.metrics.bytes_received("upstream", len(data))
            replies.feed(data)
            reply = replies.next_reply()
            if reply is not None:
                return reply
            now = trio.current_time()  # a part of a reply: read on, the deadline stands
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

    # -- connecting ---------------------------------------------------------------------

    async def connect(self) -> None:
        with trio.move_on_after(self.settings.timeout) as scope:
            try:
                self.stream, self.address = await self._opener()
            except OSError as exc:
                raise UpstreamFailure(
                    f"SERVER: couldn't connect to: {self._name()}: {os_error(exc)}",
                    "unavailable",
                ) from exc
        if scope.cancelled_caught:
            raise UpstreamFailure(
                f"SERVER: couldn't connect to: {self._name()}: timed out", "unavailable"
            )
        assert self.stream is not None
        self.relay = relay_name(self.stream, self.address)
        self.log.debug("SERVER connected to: %s", self.relay)
        self.activity = trio.current_time()
        if self.settings.tls is OutTLSMode.IMPLICIT:
            await self.start_tls()  # RFC 8314: before the banner

    # -- TLS ----------------------------------------------------------------------------

    def server_hostname(self) -> str | None:
        """The name checked in the next server's certificate (and sent as SNI when it is
        a name): OutTLSServerName, else the OutAddress host, else the address we reached
        (the client's own or original destination; None for a Unix socket)."""
        name = self.settings.tls_hostname
        if name is not None:
            return name
        address = self.settings.address
        if address is not None and address.kind is AddressKind.UNIX:
            return None
        return self.address or None

    async def start_tls(self) -> None:
        """The TLS handshake with the next server over the current stream (implicit TLS, or
        after its 220 to our STARTTLS), under TimeOut.  Never falls back to plain text: a
        failure is an `UpstreamFailure` whose log line says why (certificate verification,
        timeout, a closed connection), and the client gets 421 4.7.0."""
        assert self.stream is not None
        context = self.settings.tls_context
        assert context is not None, "OutTLS is on, so the config loader built its context"
        name = self.server_hostname()
        if self.replies.buffered_size:
            # Bytes after the 220 and before the handshake: an injection attempt.
            raise UpstreamFailure(
                "SERVER: sent data after its reply to STARTTLS", "TLS failure", "4.7.0"
            )
        stream = trio.SSLStream(self.stream, context, server_hostname=name, https_compatible=True)
        with trio.move_on_after(self.settings.timeout) as scope:
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                cause = exc.__cause__
                if isinstance(cause, ssl.SSLCertVerificationError):
                    why = f"certificate verification failed: {cause.verify_message}"
                elif cause is not None:
                    why = str(cause) or type(cause).__name__
                else:
                    why = "connection closed"
                raise UpstreamFailure(
                    f"SERVER: TLS handshake failed with {name or self.address}: {why}",
                    "TLS handshake failed",
                    "4.7.0",
                ) from exc
        if scope.cancelled_caught:
            raise UpstreamFailure(
                "network operation timed out: upstream TLS handshake",
                "TLS handshake timed out",
                "4.7.0",
            )
        self.stream = stream
        self.tls = True
        self.activity = trio.current_time()
        self.metrics.tls_started("upstream")
        self.log.info(
            "SERVER TLS established: %s, %s (%s)",
            stream.version(),
            stream.cipher()[0],
            "verified" if context.verify_mode == ssl.CERT_REQUIRED else "not verified",
        )

    def _name(self) -> str:
        if self.info.original_destination is not None:
            host, port = self.info.original_destination
            return f"{host}:{port}"
        return str(self.settings.address)

    async def _open(self) -> tuple[trio.abc.Stream, str]:
        settings = self.settings
        if settings.transparent is not TransparentMode.OFF:
            try:
                host, port = self.info.lookup_original_destination()
            except NoOriginalDestination as exc:
                raise UpstreamFailure(
                    f"couldn't get source address for transparent proxying: {exc}",
                    "unavailable",
                ) from exc
            if host == self.info.client:
                raise UpstreamFailure("loop detected in transparent proxying", "unavailable")
            if settings.transparent is TransparentMode.FULL:
                return await self._open_transparent(host, port), host
            return await trio.open_tcp_stream(host, port), host
        address = settings.address
        assert address is not None
        if address.kind is AddressKind.UNIX:
            assert address.path is not None
            return await trio.open_unix_socket(address.path), address.path
        # Port only: the loopback feature, the client's own address (docs/behaviour.md).
        target = self.info.client if address.is_port_only else address.host
        assert target is not None
        stream = await trio.open_tcp_stream(target, address.port)
        return stream, format_host(stream.socket.getpeername())

    async def _open_transparent(self, host: str, port: int) -> trio.SocketStream:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        try:
            try:
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                await sock.bind((self.info.client, 0))
            except OSError as exc:
                self.log.debug("couldn't bind to the client's address: %s", exc)
            await sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


def relay_name(stream: trio.abc.Stream, fallback: str) -> str:
    """``host:port`` (``[v6]:port``) of a TCP peer, as the summary's relay=; `fallback`
    (the socket path, or what a test's opener said) for anything else."""
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            peer = stream.socket.getpeername()
            if isinstance(peer, tuple) and len(peer) >= 2:
                host = format_host(peer)
                return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return fallback


def os_error(exc: OSError) -> str:
    """The real reason of a failed connect (B13): trio.open_tcp_stream raises a summary
    ("all attempts to connect ... failed") caused by the attempts' own errors."""
    reasons: list[str] = []
    cause = exc.__cause__
    causes = cause.exceptions if isinstance(cause, BaseExceptionGroup) else [cause]
    for error in causes:
        if isinstance(error, OSError) and error.strerror and error.strerror not in reasons:
            reasons.append(error.strerror)
    if reasons:
        return "; ".join(reasons)
    return exc.strerror or str(exc)
