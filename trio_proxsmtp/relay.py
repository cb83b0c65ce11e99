"""One client connection: the Trio layer over the sans-IO `Session`.

Each connection is one task under one cancel scope, owning the client stream and the
upstream stream; while a message is filtered, a nursery inside it holds the filter process
task, a watcher on the client and the keepalives.  Every wait on a peer or a process runs
under a deadline named after its phase (TimeOut for reads and writes on both sides,
FilterTimeout inside the filter, the connect).  When the client leaves, the connection's
scope is cancelled: the upstream is closed without the message's final ".", the filter's
process group is killed and the spool files are removed, so a message whose client left
before its final "." went upstream is never delivered.

Rules kept here (spec §15): the whole message is read up to its terminator before any reply
(B2); a 250 to the client's final "." is the upstream's own reply to ours; the upstream's
failures reach the client as 421 with the real error in the log (B13).
"""

from __future__ import annotations

import datetime
import errno
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress

import attrs
import trio

from trio_proxsmtp.address import AddressKind, format_host
from trio_proxsmtp.config import Config, FilterType, TransparentMode
from trio_proxsmtp.filter import FilterSpec, VerdictKind, filter_environment, run_filter
from trio_proxsmtp.header import HeaderInserter, expand_header
from trio_proxsmtp.log import connection_logger
from trio_proxsmtp.protocol.commands import Command, Verb, parse_command
from trio_proxsmtp.protocol.data import DataReceiver, DataSender
from trio_proxsmtp.protocol.errors import RemoteProtocolError
from trio_proxsmtp.protocol.lines import CLIENT_LINE_LIMIT, LineBuffer, LineTooLong
from trio_proxsmtp.protocol.replies import Reply, ReplyParser, reply_from_text
from trio_proxsmtp.protocol.session import (
    LOCAL_ERROR,
    Action,
    Close,
    Log,
    Outcome,
    Purpose,
    ReceiveMessage,
    RunFilter,
    SendClient,
    SendMessage,
    SendUpstream,
    Session,
    SessionPolicy,
    SkipBytes,
    StartTLS,
    Summary,
)
from trio_proxsmtp.spool import Spool

__all__ = ["ClientGone", "Connection", "UpstreamFailure"]

RECEIVE_SIZE = 64 * 1024
# Pipelined client input kept while the client is not being read (filter, replay).
MAX_PENDING_INPUT = 64 * 1024
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)

# Our own replies (spec §18 where the reference has one).
CLIENT_TIMEOUT = Reply.single(421, "4.4.2 smtp.passthru Error: timeout exceeded")
SHUTTING_DOWN = Reply.single(421, "4.3.2 Service shutting down")


def upstream_unavailable(reason: str) -> Reply:
    return Reply.single(421, f"4.4.1 smtp.passthru Error: upstream {reason}")


class ClientGone(Exception):
    """The client closed or reset the connection."""


class UpstreamFailure(Exception):
    """The upstream could not be reached, went away, timed out or broke the protocol."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # the short form the client sees in its 421


class _ClientTimeout(Exception):
    pass


class _Drained(Exception):
    """Shutdown reached a session waiting for its next command."""


class _Closing(Exception):
    """The session ends normally (QUIT answered, or drained)."""


@attrs.define
class ConnectionInfo:
    client: str  # CLIENT: the peer's address ("" for an unnamed unix peer)
    local: str  # %l: the address it connected to
    original_destination: tuple[str, int] | None = None


class Connection:
    """Relays one client connection; `run` returns when it is over, never raises."""

    def __init__(self, config: Config, client: trio.SocketStream, conn_id: int) -> None:
        self.config = config
        # The client stream: the socket's, or a TLS stream over it after STARTTLS.
        self.client: trio.abc.Stream = client
        self.client_socket = client.socket
        self.log = connection_logger(conn_id)
        self.trace = self.log.isEnabledFor(logging.DEBUG)
        sock = client.socket
        peer = _peername(sock)
        self.info = ConnectionInfo(client=format_host(peer), local=format_host(_sockname(sock)))
        reject = (
            reply_from_text(config.filter_reject)
            if (config.filter_type is FilterType.REJECT)
            else None
        )
        self.session = Session(
            SessionPolicy(
                client=self.info.client,
                client_is_ipv6=sock.family == socket.AF_INET6,
                filtering=bool(config.filter_command) and reject is None,
                reject=reject,
                skip_authenticated=config.skip_authenticated,
                xclient=config.xclient,
                max_message_size=config.max_message_size or None,
                pipelining=config.pipelining,
                starttls=config.tls_context is not None,
            )
        )
        self.upstream: trio.abc.Stream | None = None
        self.server_address = ""
        self.client_lines = LineBuffer(CLIENT_LINE_LIMIT)
        self.replies = ReplyParser()
        self.spool: Spool | None = None
        self.output: Spool | None = None
        self.draining = False
        self._client_left = False
        self._idle_scope: trio.CancelScope | None = None
        self._connection_scope = trio.CancelScope()
        self._client_eof = False
        self._upstream_activity = trio.current_time()

    # -- public -------------------------------------------------------------------------

    def drain(self) -> None:
        """Shutdown: an idle session ends now with 421; a busy one when its message is done."""
        self.draining = True
        if self._idle_scope is not None:
            self._idle_scope.cancel()

    def cancel(self) -> None:
        """Shutdown grace is over: end now (the client gets 421 if we can still tell it)."""
        self._connection_scope.cancel()

    async def run(self) -> None:
        self.log.info("accepted connection from: %s", self.info.client or "(unix)")
        farewell: Reply | None = None
        ended = "connection closed"  # why, if it ends in the middle of a message
        try:
            with self._connection_scope:
                try:
                    await self._run()
                except _Closing:
                    pass
                except ClientGone as exc:
                    self.log.info("client disconnected: %s", exc)
                    ended = "client disconnected"
                except _ClientTimeout:
                    self.log.error("network operation timed out: client idle")
                    farewell, ended = CLIENT_TIMEOUT, "client timed out"
                except UpstreamFailure as exc:
                    self.log.error("%s", exc)
                    farewell = upstream_unavailable(exc.reason)
                    ended = f"upstream {exc.reason}"
                except RemoteProtocolError as exc:
                    self.log.error("protocol error: %s", exc)
                    farewell, ended = exc.reply, "upstream protocol error"
            if self._connection_scope.cancelled_caught:
                if self._client_left:
                    ended = "client disconnected"
                else:
                    self.log.warning("session cut short by shutdown")
                    farewell, ended = SHUTTING_DOWN, "shutdown"
            self._log_actions(self.session.abort(ended))
            if farewell is not None:
                await self._say_goodbye(farewell)
        except Exception:  # one failing connection never takes the server down
            self.log.exception("internal error")
            await self._say_goodbye(Reply.single(421, "4.3.0 Local Error"))
        finally:
            self._remove_spools()
            with trio.CancelScope(shield=True):
                if self.upstream is not None:
                    await self.upstream.aclose()
                # (TLS: https_compatible, so no close_notify to wait on; the socket closes.)
                await self.client.aclose()
            self.log.debug("connection closed")

    # -- the session --------------------------------------------------------------------

    async def _run(self) -> None:
        if self.config.xclient:
            # XCLIENT NAME= needs the client's host name: look it up while connecting.
            name = "[TEMPUNAVAIL]"

            async def look_up() -> None:
                nonlocal name
                name = await client_host_name(self.info.client)

            with _single_error():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(look_up)
                    self.upstream = await self._connect_upstream()
            self.session.policy = attrs.evolve(self.session.policy, xclient_name=name)
        else:
            self.upstream = await self._connect_upstream()
        banner = await self._read_reply()
        await self._perform(self.session.greeting(banner))
        while True:
            try:
                if self.draining and self.client_lines.buffered_size == 0:
                    raise _Drained
                line = await self._next_client_line()
            except _Drained:
                self.log.info("shutting down: closing an idle session")
                await self._send_client(SHUTTING_DOWN)
                raise _Closing from None
            if isinstance(line, LineTooLong):
                self.log.debug("CLIENT < (%d bytes discarded: line too long)", line.length)
                await self._perform(self.session.line_too_long())
                continue
            in_auth = self.session.in_auth
            command = parse_command(line)
            if self.trace:
                self.log.debug("CLIENT < %s", _show_command(line, command, in_auth))
            await self._perform(self.session.command(command))

    async def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendClient):
                if not self.session.in_message:
                    # The message's fate is decided: its spools go before the client hears it.
                    self._remove_spools()
                await self._send_client(action.reply)
            elif isinstance(action, SendUpstream):
                secret = action.purpose is Purpose.AUTH_CONTINUATION
                await self._send_upstream(action.line, action.command, secret)
                reply = await self._read_reply()
                await self._perform(self.session.reply(action, reply))
            elif isinstance(action, ReceiveMessage):
                if action.stream:
                    await self._stream_message()
                    reply = await self._read_reply()
                    await self._perform(self.session.reply(action, reply))
                else:
                    await self._perform(await self._receive_message())
            elif isinstance(action, RunFilter):
                await self._perform(await self._filter())
            elif isinstance(action, SendMessage):
                await self._send_message()
                reply = await self._read_reply()
                await self._perform(self.session.reply(action, reply))
            elif isinstance(action, SkipBytes):
                await self._skip_client_bytes(action.count)
            elif isinstance(action, StartTLS):
                await self._start_tls()
            elif isinstance(action, Summary | Log):
                self._log_actions([action])
            elif isinstance(action, Close):
                raise _Closing
            else:  # pragma: no cover - exhaustive
                raise AssertionError(action)

    def _log_actions(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Summary):
                self.log.info("%s", action.text)
            elif isinstance(action, Log):
                self.log.log(action.level, "%s", action.message)

    # -- the client side ----------------------------------------------------------------

    async def _next_client_line(self) -> bytes | LineTooLong:
        while True:
            line = self.client_lines.next_line()
            if line is not None:
                return line
            if self._client_eof:
                raise ClientGone("closed the connection")
            try:
                with trio.CancelScope() as idle:
                    self._idle_scope = idle
                    if self.draining:
                        idle.cancel()
                    data = await self._receive_client()
            finally:
                self._idle_scope = None
            if idle.cancelled_caught:
                raise _Drained
            if not data:
                raise ClientGone("closed the connection")
            self.client_lines.feed(data)

    async def _receive_client(self) -> bytes:
        with trio.move_on_after(self.config.timeout) as scope:
            try:
                return bytes(await self.client.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGone(str(exc) or "connection reset") from exc
        assert scope.cancelled_caught
        raise _ClientTimeout

    async def _send_client(self, reply: Reply) -> None:
        data = reply.to_bytes()
        if self.trace:
            for line in data.splitlines():
                self.log.debug("CLIENT > %s", _show(line))
        with trio.move_on_after(self.config.timeout) as scope:
            try:
                await self.client.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ClientGone(str(exc) or "connection reset") from exc
        if scope.cancelled_caught:
            raise ClientGone("timed out writing to the client")

    async def _start_tls(self) -> None:
        """RFC 3207 after our 220: the handshake, then the session starts over."""
        context = self.config.tls_context
        assert context is not None
        injected = self.client_lines.take_remaining()
        if injected:
            # Plain text sent after STARTTLS, before the handshake: never run it as
            # commands of the TLS session (the STARTTLS command injection attack).
            self.log.warning("discarded %d bytes sent right after STARTTLS", len(injected))
        # https_compatible: a client may close without close_notify (most SMTP clients do
        # after QUIT), and our close must not wait for the client to read one.
        stream = trio.SSLStream(self.client, context, server_side=True, https_compatible=True)
        with trio.move_on_after(self.config.timeout) as scope:
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = exc.__cause__ or exc
                raise ClientGone(f"TLS handshake failed: {reason}") from exc
        if scope.cancelled_caught:
            raise ClientGone("TLS handshake timed out")
        self.client = stream
        self.session.tls_started()
        self.log.info("TLS established: %s, %s", stream.version(), stream.cipher()[0])

    async def _say_goodbye(self, reply: Reply) -> None:
        """Best effort: the client may be gone already."""
        with trio.CancelScope(shield=True), trio.move_on_after(5), suppress(ClientGone):
            await self._send_client(reply)

    async def _skip_client_bytes(self, count: int) -> None:
        pending = self.client_lines.take_remaining()
        while len(pending) < count:
            count -= len(pending)
            pending = await self._receive_client()
            if not pending:
                raise ClientGone("closed the connection")
        self.client_lines.feed(pending[count:])

    @asynccontextmanager
    async def _watch_client(self) -> AsyncIterator[None]:
        """While the client is not being read (filter, replay): notice it leaving at once.

        Bytes it pipelines meanwhile are kept (bounded) for the next command.  End of file
        with no complete command buffered means the client left: the connection is cancelled
        so the message is not delivered.  A client that pipelined QUIT (or anything) after
        its "." and then closed has finished speaking, not left: its message goes on.
        """

        async def watch() -> None:
            while self.client_lines.buffered_size < MAX_PENDING_INPUT and not self._client_eof:
                try:
                    data = await self.client.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                    self.client_lines.take_remaining()
                if data:
                    self.client_lines.feed(bytes(data))
                    continue
                self._client_eof = True
                if self.client_lines.buffered_size == 0:
                    self.log.info("client disconnected before its message was answered")
                    self._client_left = True
                    self._connection_scope.cancel()
                return
            await trio.sleep_forever()

        if self._client_eof:
            yield
            return
        with _single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                yield
                nursery.cancel_scope.cancel()

    # -- the message --------------------------------------------------------------------

    async def _receive_message(self) -> list[Action]:
        """Spool the client's message up to <CRLF>.<CRLF>; always read to the end (B2)."""
        receiver = DataReceiver()
        error: str | None = None
        try:
            # Only a file-mode filter needs the message by name ($EMAIL).
            named = self.config.filter_type is FilterType.FILE
            self.spool = Spool.create(self.config.temp_directory, named=named)
            if not self.spool.in_memory:
                self.log.debug("created cache file: %s", self.spool.path)
        except OSError as exc:
            error = f"couldn't open cache file: {exc}"
            self.log.error("%s", error)

        # Past the size limit (MaxMessageSize, the upstream's SIZE) the message is refused
        # (552) once read to its end: keep reading, stop writing, so a huge message cannot
        # fill the disk for nothing.
        limit = self.session.size_limit

        async def spool(body: bytes) -> None:
            nonlocal error
            if limit is not None and receiver.size > limit:
                return
            if self.spool is not None and error is None:
                try:
                    self.spool.write(body)
                except OSError as exc:
                    error = f"couldn't write cache file: {exc}"
                    self.log.error("%s", error)

        async with self._keepalives():
            await self._read_message(receiver, spool)
        if error is None and self.spool is not None:
            try:
                self.spool.finish()
            except OSError as exc:
                error = f"couldn't write cache file: {exc}"
                self.log.error("%s", error)
        if error is not None:
            return self.session.message_failed(LOCAL_ERROR, error)
        self.log.debug("received %d message bytes", receiver.size)
        return self.session.message_received(receiver.size)

    async def _filter(self) -> list[Action]:
        assert self.spool is not None and self.config.filter_command
        envelope = self.session.envelope
        env = filter_environment(
            client=self.info.client,
            server=self.server_address,
            sender=envelope.sender,
            recipients=envelope.recipients,
            remote=envelope.remote_addr,
            remote_helo=envelope.remote_helo,
            temp_directory=self.config.temp_directory,
        )
        spec = FilterSpec(
            command=self.config.filter_command,
            mode=self.config.filter_type,
            timeout=self.config.filter_timeout,
            temp_directory=self.config.temp_directory,
        )
        async with self._watch_client(), self._keepalives():
            verdict = await run_filter(spec, self.spool, env)
        self.log.debug("filter verdict: %s (%s)", verdict.kind.name, verdict.detail)
        if verdict.kind is VerdictKind.ACCEPT:
            assert verdict.message is not None
            if verdict.message is not self.spool:
                self.output = verdict.message
            return self.session.filter_done(True, None, Outcome.FILTERED)
        if verdict.kind is VerdictKind.ERROR:
            self.log.error("filter command failed: %s", verdict.detail)
            outcome = Outcome.FILTER_ERROR
        else:
            outcome = Outcome.DROPPED if verdict.kind is VerdictKind.DROP else Outcome.REJECTED
        assert verdict.reply is not None
        return self.session.filter_done(False, verdict.reply, outcome, verdict.detail)

    async def _send_message(self) -> None:
        """Replay the spool: header inserted, dot-stuffed, CRLF-clean, then the final "."."""
        message = self.output or self.spool
        assert message is not None and self.upstream is not None
        sender = DataSender()
        inserter = self._header_inserter()
        sent = 0
        pending = b""  # held back one chunk, so the last one goes out with the "."
        for chunk in message.chunks():
            if pending:
                await self._send_upstream_data(pending)
                sent += len(pending)
            pending = sender.feed(inserter.feed(chunk) if inserter is not None else chunk)
        tail = inserter.finish() if inserter is not None else b""
        data = pending + sender.feed(tail) + sender.finish()
        # The final "." commits the message: not if its client has left meanwhile.
        if self._client_has_left():
            raise ClientGone("closed the connection before its message was answered")
        await self._send_upstream_data(data)
        if self.trace:
            self.log.debug("SERVER > . (%d bytes sent)", sent + len(data))

    def _client_has_left(self) -> bool:
        """One non-blocking peek at the client socket: end of file (or a reset) with no
        command pipelined means it left. Cheaper than a watcher task for every message."""
        if self.client_lines.buffered_size:
            return False  # it said something more first: it finished speaking, not left
        if self._client_eof:
            return True
        sock = self.client_socket
        peek = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())
        try:
            return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            peek.detach()

    def _header_inserter(self) -> HeaderInserter | None:
        if not self.config.header:
            return None
        header, warnings = expand_header(
            self.config.header,
            client=self.info.client,
            local=self.info.local,
            now=datetime.datetime.now().astimezone(),
        )
        for warning in warnings:
            self.log.warning("%s", warning)
        return HeaderInserter(header) if header else None

    async def _stream_message(self) -> None:
        """Skip mode: the client's message goes straight upstream, unfiltered (spec §7.5)."""
        receiver = DataReceiver()
        sender = DataSender()

        async def forward(body: bytes) -> None:
            out = sender.feed(body)
            if receiver.done:
                out += sender.finish()
            if out:
                await self._send_upstream_data(out)

        await self._read_message(receiver, forward)
        self.log.debug("skipped %d data bytes", receiver.size)

    async def _read_message(
        self, receiver: DataReceiver, deliver: Callable[[bytes], Awaitable[None]]
    ) -> None:
        """Pass the client's message, un-stuffed, to `deliver` up to <CRLF>.<CRLF>
        (`receiver.done` is set before the last call); what follows it stays buffered."""
        data = self.client_lines.take_remaining()
        while True:
            if data:
                await deliver(receiver.feed(data))
                if receiver.done:
                    self.client_lines.feed(receiver.take_remaining())
                    return
            data = await self._receive_client()
            if not data:
                raise ClientGone("unexpected end of data from client")

    def _remove_spools(self) -> None:
        for spool in (self.output, self.spool):
            if spool is not None:
                spool.close()
        self.output = self.spool = None

    # -- the upstream side --------------------------------------------------------------

    async def _connect_upstream(self) -> trio.abc.Stream:
        config = self.config
        with trio.move_on_after(config.timeout) as scope:
            try:
                stream, self.server_address = await self._open_upstream()
            except OSError as exc:
                raise UpstreamFailure(
                    f"SERVER: couldn't connect to: {self._upstream_name()}: {_os_error(exc)}",
                    "unavailable",
                ) from exc
        if scope.cancelled_caught:
            raise UpstreamFailure(
                f"SERVER: couldn't connect to: {self._upstream_name()}: timed out", "unavailable"
            )
        self.log.debug("SERVER connected to: %s", self.server_address)
        self._upstream_activity = trio.current_time()
        return stream

    def _upstream_name(self) -> str:
        if self.info.original_destination is not None:
            host, port = self.info.original_destination
            return f"{host}:{port}"
        return str(self.config.out_address)

    async def _open_upstream(self) -> tuple[trio.abc.Stream, str]:
        config = self.config
        if config.transparent_proxy is not TransparentMode.OFF:
            host, port = self._original_destination()
            if host == self.info.client:
                raise UpstreamFailure("loop detected in transparent proxying", "unavailable")
            if config.transparent_proxy is TransparentMode.FULL:
                return await self._open_transparent(host, port), host
            stream = await trio.open_tcp_stream(host, port)
            return stream, host
        address = config.out_address
        assert address is not None
        if address.kind is AddressKind.UNIX:
            assert address.path is not None
            return await trio.open_unix_socket(address.path), address.path
        # Port only: the loopback feature, the client's own address (spec §5).
        target = self.info.client if address.is_port_only else address.host
        assert target is not None
        stream = await trio.open_tcp_stream(target, address.port)
        return stream, format_host(stream.socket.getpeername())

    def _original_destination(self) -> tuple[str, int]:
        sock = self.client_socket
        try:
            if sock.family == socket.AF_INET6:
                raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
                port = struct.unpack_from("!H", raw, 2)[0]
                host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            else:
                raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
                port = struct.unpack_from("!H", raw, 2)[0]
                host = socket.inet_ntop(socket.AF_INET, raw[4:8])
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOPROTOOPT):
                raise UpstreamFailure(
                    f"couldn't get source address for transparent proxying: {exc}",
                    "unavailable",
                ) from exc
            # No NAT entry (TPROXY): the local address is the original destination.
            host, port = sock.getsockname()[:2]
        self.info.original_destination = (host, port)
        return host, port

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

    async def _send_upstream(
        self, line: bytes, command: Command | None = None, secret: bool = False
    ) -> None:
        if self.trace:
            self.log.debug("SERVER > %s", _show_command(line, command, secret))
        await self._send_upstream_data(line)

    async def _send_upstream_data(self, data: bytes) -> None:
        assert self.upstream is not None
        with trio.move_on_after(self.config.timeout) as scope:
            try:
                await self.upstream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise UpstreamFailure(
                    f"server disconnected unexpectedly: {exc}", "closed the connection"
                ) from exc
        if scope.cancelled_caught:
            raise UpstreamFailure("network operation timed out: writing to server", "timed out")
        self._upstream_activity = trio.current_time()

    async def _read_reply(self) -> Reply:
        assert self.upstream is not None
        while True:
            reply = self.replies.next_reply()
            if reply is not None:
                if self.trace:
                    for line in reply.to_bytes().splitlines():
                        self.log.debug("SERVER < %s", _show(line))
                return reply
            with trio.move_on_after(self.config.timeout) as scope:
                try:
                    data = await self.upstream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise UpstreamFailure(
                        f"server disconnected unexpectedly: {exc}", "closed the connection"
                    ) from exc
            if scope.cancelled_caught:
                raise UpstreamFailure(
                    "network operation timed out: waiting for server", "timed out"
                )
            if not data:
                raise UpstreamFailure("server disconnected unexpectedly", "closed the connection")
            self._upstream_activity = trio.current_time()
            self.replies.feed(bytes(data))

    @asynccontextmanager
    async def _keepalives(self) -> AsyncIterator[None]:
        """KeepAlives: NOOP upstream whenever it has been quiet that long (B24: also while
        the filter runs).  Each exchange is shielded so that ending the phase never leaves
        a half-read reply behind."""
        interval = self.config.keep_alives
        if interval <= 0:
            yield
            return

        async def noop_loop() -> None:
            while True:
                await trio.sleep_until(self._upstream_activity + interval)
                if trio.current_time() < self._upstream_activity + interval:
                    continue
                with trio.CancelScope(shield=True):
                    await self._send_upstream(b"NOOP\r\n")
                    await self._read_reply()

        with _single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(noop_loop)
                yield
                nursery.cancel_scope.cancel()


# -- helpers ------------------------------------------------------------------------------

NAME_LOOKUP_TIMEOUT = 5.0


async def client_host_name(address: str) -> str:
    """The client's host name for XCLIENT NAME=, forward-confirmed as Postfix does it: the
    PTR name counts only if it resolves back to the address, or anyone controlling their
    reverse DNS could claim any name. Else Postfix's "[UNAVAILABLE]" / "[TEMPUNAVAIL]"."""
    if not address:
        return "[UNAVAILABLE]"
    with trio.move_on_after(NAME_LOOKUP_TIMEOUT):
        try:
            name, _port = await trio.socket.getnameinfo((address, 0), socket.NI_NAMEREQD)
            infos = await trio.socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return "[TEMPUNAVAIL]" if exc.errno == socket.EAI_AGAIN else "[UNAVAILABLE]"
        except OSError:
            return "[TEMPUNAVAIL]"
        confirmed = any(info[4][0] == address for info in infos)
        return name if confirmed else "[UNAVAILABLE]"
    return "[TEMPUNAVAIL]"


def _show(line: bytes) -> str:
    return line.rstrip(b"\r\n").decode("utf-8", "replace")[:200]


def _show_command(line: bytes, command: Command | None, in_auth: bool) -> str:
    """A client line for the protocol trace, with AUTH credentials hidden."""
    if in_auth:
        return "(AUTH continuation hidden)"
    if command is not None and command.verb is Verb.AUTH:
        mechanism = command.argument.split(None, 1)[:1]
        hidden = " (credentials hidden)" if len(command.argument.split()) > 1 else ""
        return " ".join(["AUTH", *mechanism]) + hidden
    return _show(line)


def _os_error(exc: OSError) -> str:
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


def _peername(sock: trio.socket.SocketType) -> object:
    try:
        return sock.getpeername()
    except OSError:
        return ""


def _sockname(sock: trio.socket.SocketType) -> object:
    try:
        return sock.getsockname()
    except OSError:
        return ""


@contextmanager
def _single_error() -> Iterator[None]:
    """Let one error out of a nursery as itself, not wrapped in an ExceptionGroup, so the
    session's `except ClientGone` / `except UpstreamFailure` see it."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
