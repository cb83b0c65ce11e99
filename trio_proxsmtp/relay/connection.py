"""One client connection: the run loop that performs the sans-IO session's actions.

A `Connection` is one task under one cancel scope.  It owns the `Session` and three parts,
each the only owner of what it holds: the `ClientChannel` (client stream and buffer), the
`Upstream` (upstream stream and replies) and the `Transaction` (the current message's
spools); the `Performer` (perform.py) does the session's actions with them.  It works on
any `trio.abc.Stream`; who the client is comes in a `ClientInfo` built at accept, what the
configuration decides in its `RelaySettings`.  Every wait on a peer or a process runs under
a deadline named after its phase (TimeOut, FilterTimeout, the connect).  When the client
leaves, the connection's scope is cancelled: the upstream is closed without the message's
final ".", the filter's process group is killed and the spools are removed, so a message
whose client left before its final "." went upstream is never delivered.

Every error that ends a connection is a `ProxyError` carrying its farewell reply
(endings.py): `run` logs it, tells the client, and closes.

Rules kept here (docs/behaviour.md): the whole message is read up to its terminator
before any reply (B2); a 250 to the client's final "." is the upstream's own reply to ours;
the upstream's failures reach the client as 421 with the real error in the log (B13).
"""

from __future__ import annotations

import logging
import socket
import ssl

import trio

from trio_proxsmtp.common.log import connection_logger
from trio_proxsmtp.common.log_format import structured
from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.common.nursery import single_error
from trio_proxsmtp.common.trace import show_command
from trio_proxsmtp.protocol.errors import LocalProtocolError, ProxyError, RemoteProtocolError
from trio_proxsmtp.protocol.message.disconnect import Disconnect
from trio_proxsmtp.protocol.session.events import (
    BadCommandLine,
    ClientCommand,
    ClientNameKnown,
    ClientTLSActive,
    CommandTooLong,
    ConnectionEnded,
    Greeting,
    UpstreamTLSActive,
)
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.smtp.commands import Verb, check_command_line, parse_command
from trio_proxsmtp.protocol.smtp.lines import LineTooLong
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.relay.client_channel import ClientChannel, Drained
from trio_proxsmtp.relay.client_info import ClientInfo, client_host_name
from trio_proxsmtp.relay.deadlines import ClientDeadlines, Stress
from trio_proxsmtp.relay.endings import INTERNAL_ERROR, SHUTTING_DOWN, Closing, Ending
from trio_proxsmtp.relay.perform import Performer
from trio_proxsmtp.relay.settings import RelaySettings
from trio_proxsmtp.relay.transaction import Transaction
from trio_proxsmtp.relay.upstream import Opener, Upstream, UpstreamFailure
from trio_proxsmtp.stages.milter.decisions import MilterContext
from trio_proxsmtp.stages.milter.macros import client_name_macro
from trio_proxsmtp.stages.milter.milters import Milters
from trio_proxsmtp.stages.policy import PolicyClient

__all__ = ["Connection"]

CLOSE_TIMEOUT = 5.0  # seconds a closing stream may take (no wait without a deadline)


class Connection:
    """Relays one client connection; `run` returns when it is over, never raises."""

    def __init__(
        self,
        settings: RelaySettings,
        stream: trio.abc.Stream,
        info: ClientInfo,
        conn_id: int | str,
        *,
        open_upstream: Opener | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        metrics: Metrics = NULL_METRICS,
        stress: Stress | None = None,
    ) -> None:
        """`implicit_tls`: the client speaks TLS from the first byte (ListenTLS)."""
        self.settings = settings
        self.implicit_tls = implicit_tls
        self.info = info
        self.log = connection_logger(conn_id)
        self.conn_id = conn_id
        self.trace = self.log.isEnabledFor(logging.DEBUG)
        policy = settings.policy_for(
            info.client,
            info.is_ipv6,
            peer=info.peer,
            port=info.client_port,
            destination=info.local if info.local_port is not None else None,
            destination_port=info.local_port,
        )
        self.session = Session(policy)
        self._scope = trio.CancelScope()
        deadlines = ClientDeadlines.from_settings(settings.deadlines, stress)
        self.client = ClientChannel(stream, info, settings.timeout, self.log, deadlines)
        self.client.pipelining_offered = lambda: self.session.pipelining_offered
        self.upstream = Upstream(settings.upstream, info, self.log, open_upstream)
        self.transaction = Transaction(
            settings.transaction, self.session, self.client, self.upstream, self.log, self._scope
        )
        self.transaction.deadline.bind(self._scope)  # MessageTimeOut moves its deadline
        self.performer = Performer(
            self.session,
            self.client,
            self.upstream,
            self.transaction,
            info,
            conn_id,
            self.log,
            settings.tls_context,
        )
        self._perform = self.performer.perform
        if settings.policy_service is not None:
            self.performer.policy = PolicyClient(settings.policy_service)
        self.draining = False
        self.counts: dict[Verb, int] = {}  # the client's commands by verb, for `disconnect`
        self.metrics = self.client.metrics = self.upstream.metrics = metrics
        self.transaction.metrics = self.performer.metrics = metrics

    def drain(self) -> None:
        """Shutdown: an idle session ends now with 421; a busy one when its message is done."""
        self.draining = True
        self.client.stop_idle()

    def cancel(self) -> None:
        """Shutdown grace is over: end now (the client gets 421 if we can still tell it)."""
        self._scope.cancel()

    async def run(self) -> None:
        self.log.info("accepted connection from: %s", self.info.client or "(unix)")
        started = trio.current_time()
        farewell: Reply | None = None
        ended = "connection closed"  # why, if it ends in the middle of a message
        try:
            with self._scope:
                try:
                    await self._run()
                except ProxyError as exc:
                    if isinstance(exc, LocalProtocolError):
                        raise  # our bug: the internal error below
                    farewell, ended = exc.reply, self._log_ending(exc)
            if self._scope.cancelled_caught:
                timed_out = self.transaction.deadline.expired()
                if self.transaction.client_left:
                    ended = "client disconnected"
                elif timed_out is not None:  # MessageTimeOut (message_deadline.py)
                    farewell, ended = timed_out.reply, self._log_ending(timed_out)
                else:
                    self.log.warning("session cut short by shutdown")
                    farewell, ended = SHUTTING_DOWN, "shutdown"
            # A message cut short reports the time it ran (docs/behaviour.md §9.2).
            seconds = self.transaction.elapsed() if self.session.in_message else 0.0
            ended_event = ConnectionEnded(ended, seconds=seconds)
            self.performer.log_actions(self.session.handle(ended_event))
            if farewell is not None:
                await self.client.say_goodbye(farewell)
        except Exception:  # one failing connection never takes the server down
            self.log.exception("internal error")
            await self.client.say_goodbye(INTERNAL_ERROR)
        finally:
            self.transaction.close()
            # Bounded too (a TLS close_notify to a peer that never reads): a cancelled
            # aclose still closes the socket.
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await self.upstream.aclose()
            if self.performer.policy is not None:
                with trio.CancelScope(shield=True):  # (forcefully: never waits)
                    await self.performer.policy.aclose()
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await self.client.aclose()
            # One closing line per connection (docs/behaviour.md §9.6).
            gone = Disconnect(
                self.info.client,
                verb_counts(self.counts),
                trio.current_time() - started,
                self.info.peer,
            )
            self.log.info("%s", gone, extra=structured("disconnect", gone.fields))
            self.log.debug("connection closed")

    async def _run(self) -> None:
        if self.implicit_tls is not None:
            # ListenTLS (RFC 8314): the handshake first, under TimeOut, before the banner
            # and before the upstream hears of this client; no STARTTLS is offered.
            await self.client.start_tls(None, self.implicit_tls)
            self.session.handle(ClientTLSActive())
        if self._wants_client_name():
            # XCLIENT/XFORWARD NAME= and the milters' {client_name} need the client's host
            # name: look it up while connecting.
            name = "[TEMPUNAVAIL]"

            async def look_up() -> None:
                nonlocal name
                name = await client_host_name(self.info.client)

            with single_error():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(look_up)
                    await self.upstream.connect()
            self.session.handle(ClientNameKnown(name))
        else:
            await self.upstream.connect()
        if self.upstream.tls:  # OutTLS: implicit
            self.session.handle(UpstreamTLSActive())
        if self.settings.milters is None:
            await self._relay()
            return
        # One milter session per connection, in the connection's scope: a client that
        # leaves cancels it (sockets closed at once); QUIT (or a drain) closes it politely.
        async with Milters(self.settings.milters, self.log) as milters:
            self.performer.milters = milters
            try:
                await milters.connect(self._milter_context())  # a refusal answers each stage
                await self._relay()
            except (Closing, Drained):
                await milters.close(polite=True)
                raise
            finally:
                self.performer.milters = None

    def _wants_client_name(self) -> bool:
        """XCLIENT and XFORWARD always; the milters and PolicyService for a client on a
        socket (a stream without one, in process, has no peer to look up: the name is
        "unknown")."""
        if self.settings.policy.xclient or self.settings.policy.xforward:
            return True
        asking = self.settings.milters is not None or self.settings.policy_service is not None
        return asking and self.info.socket is not None

    def _milter_context(self) -> MilterContext:
        unix = not self.info.client
        return MilterContext(
            client_address=self.info.client,
            client_port=self.info.client_port or 0,
            daemon_port=self.info.local_port or 0,
            client_name=client_name_macro(self.session.policy.xclient_name, unix=unix),
            hostname=socket.gethostname(),
            daemon_address=self.info.local,
            unix=unix,
        )

    async def _relay(self) -> None:
        """The banner, then the client's commands until the session ends."""
        try:
            [banner] = await self.upstream.exchange((), replies=1)
        except (UpstreamFailure, RemoteProtocolError):  # silence, a hang-up, garbage
            self.metrics.upstream_connect_failed("banner")
            raise
        if banner.code // 100 != 2:
            self.metrics.upstream_connect_failed("banner")
        await self._perform(self.session.handle(Greeting(banner, relay=self.upstream.relay)))
        while True:
            line = await self.client.next_command()  # Drained: shutdown came first
            if isinstance(line, LineTooLong):
                self.log.debug("CLIENT < (%d bytes discarded: line too long)", line.length)
                await self._perform(self.session.handle(CommandTooLong()))
                continue
            reason = check_command_line(line)
            if reason is not None:
                # NUL, bare CR, controls: answered here, never forwarded (issue 16, case 7).
                await self._perform(self.session.handle(BadCommandLine(reason)))
                continue
            in_auth = self.session.in_auth
            command = parse_command(line)
            if not in_auth:  # (an AUTH exchange's lines are no commands)
                self.counts[command.verb] = self.counts.get(command.verb, 0) + 1
            if self.trace:
                self.log.debug("CLIENT < %s", show_command(line, command, in_auth))
            actions = self.session.handle(ClientCommand(command))
            if self.performer.upstream_pipelining(actions):
                await self.performer.send_group(actions)
            else:
                await self._perform(actions)

    def _log_ending(self, exc: ProxyError) -> str:
        """Log the error that ends the connection; the reason a message cut short gets."""
        if isinstance(exc, Ending):
            if exc.level is not None:
                self.log.log(exc.level, exc.log_format, exc)
            return exc.ended
        # The sans-IO core's: an upstream reply that cannot be read (reply_parser.py).
        self.log.error("protocol error: %s", exc)
        return "upstream protocol error"


def verb_counts(counts: dict[Verb, int]) -> dict[str, int]:
    """The disconnect line's names for the counted verbs (`ehlo=1 ... unknown=2`)."""
    return {
        ("unknown" if verb is Verb.OTHER else verb.value.lower()): count
        for verb, count in counts.items()
    }
