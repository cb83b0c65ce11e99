"""One client connection: the run loop that performs the sans-IO session's actions.

A `Connection` is one task under one cancel scope.  It owns the `Session` and three parts,
each the only owner of what it holds: the `ClientChannel` (client stream and buffer), the
`Upstream` (upstream stream and replies) and the `Transaction` (the current message's
spools).  It works on any `trio.abc.Stream`; who the client is comes in a `ClientInfo`
built at accept.  Every wait on a peer or a process runs under a deadline named after its
phase (TimeOut, FilterTimeout, the connect).  When the client leaves, the connection's
scope is cancelled: the upstream is closed without the message's final ".", the filter's
process group is killed and the spools are removed, so a message whose client left before
its final "." went upstream is never delivered.

Rules kept here (docs/behaviour.md): the whole message is read up to its terminator
before any reply (B2); a 250 to the client's final "." is the upstream's own reply to ours;
the upstream's failures reach the client as 421 with the real error in the log (B13).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import assert_never

import attrs
import trio

from trio_proxsmtp.client_channel import ClientChannel, ClientGone, ClientTimeout, Drained
from trio_proxsmtp.client_info import ClientInfo, client_host_name
from trio_proxsmtp.config import Config, FilterType
from trio_proxsmtp.deadlines import ClientDeadlines, Stress
from trio_proxsmtp.log import connection_logger
from trio_proxsmtp.nursery import single_error
from trio_proxsmtp.protocol.commands import check_command_line, parse_command
from trio_proxsmtp.protocol.errors import RemoteProtocolError
from trio_proxsmtp.protocol.lines import LineTooLong
from trio_proxsmtp.protocol.replies import Reply, reply_from_text
from trio_proxsmtp.protocol.session import (
    Action,
    Close,
    Log,
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
from trio_proxsmtp.trace import show_command
from trio_proxsmtp.transaction import Transaction
from trio_proxsmtp.upstream import Opener, Outgoing, Upstream, UpstreamFailure

__all__ = ["Connection"]

# Our own replies (docs/behaviour.md).
CLIENT_TIMEOUT = Reply.single(421, "4.4.2 smtp.passthru Error: timeout exceeded")
SHUTTING_DOWN = Reply.single(421, "4.3.2 Service shutting down")
INTERNAL_ERROR = Reply.single(421, "4.3.0 Local Error")
CLOSE_TIMEOUT = 5.0  # seconds a closing stream may take (no wait without a deadline)


def upstream_unavailable(reason: str) -> Reply:
    return Reply.single(421, f"4.4.1 smtp.passthru Error: upstream {reason}")


class _Closing(Exception):
    """The session ends normally (QUIT answered, or drained)."""


def session_policy(config: Config, info: ClientInfo) -> SessionPolicy:
    """What the configuration decides for a session with this client."""
    reject = (
        reply_from_text(config.filter_reject) if config.filter_type is FilterType.REJECT else None
    )
    return SessionPolicy(
        client=info.client,
        client_is_ipv6=info.is_ipv6,
        filtering=bool(config.filter_command) and reject is None,
        reject=reject,
        skip_authenticated=config.skip_authenticated,
        xclient=config.xclient,
        max_message_size=config.max_message_size or None,
        pipelining=config.pipelining,
        starttls=config.tls_context is not None,
        max_recipients=config.max_recipients,
        hard_error_limit=config.hard_error_limit,
    )


class Connection:
    """Relays one client connection; `run` returns when it is over, never raises."""

    def __init__(
        self,
        config: Config,
        stream: trio.abc.Stream,
        info: ClientInfo,
        conn_id: int,
        *,
        open_upstream: Opener | None = None,
        stress: Stress | None = None,
    ) -> None:
        self.config = config
        self.info = info
        self.log = connection_logger(conn_id)
        self.trace = self.log.isEnabledFor(logging.DEBUG)
        self.session = Session(session_policy(config, info))
        self._scope = trio.CancelScope()
        deadlines = ClientDeadlines.from_config(config, stress)
        self.client = ClientChannel(stream, info, config.timeout, self.log, deadlines)
        self.upstream = Upstream(config, info, self.log, open_upstream)
        self.transaction = Transaction(
            config, self.session, self.client, self.upstream, self.log, self._scope
        )
        self.draining = False

    def drain(self) -> None:
        """Shutdown: an idle session ends now with 421; a busy one when its message is done."""
        self.draining = True
        self.client.stop_idle()

    def cancel(self) -> None:
        """Shutdown grace is over: end now (the client gets 421 if we can still tell it)."""
        self._scope.cancel()

    async def run(self) -> None:
        self.log.info("accepted connection from: %s", self.info.client or "(unix)")
        farewell: Reply | None = None
        ended = "connection closed"  # why, if it ends in the middle of a message
        try:
            with self._scope:
                try:
                    await self._run()
                except _Closing:
                    pass
                except ClientGone as exc:
                    self.log.info("client disconnected: %s", exc)
                    ended = "client disconnected"
                except ClientTimeout as exc:
                    self.log.error("network operation timed out: %s", exc)
                    farewell, ended = CLIENT_TIMEOUT, "client timed out"
                except UpstreamFailure as exc:
                    self.log.error("%s", exc)
                    farewell = upstream_unavailable(exc.reason)
                    ended = f"upstream {exc.reason}"
                except RemoteProtocolError as exc:
                    self.log.error("protocol error: %s", exc)
                    farewell, ended = exc.reply, "upstream protocol error"
            if self._scope.cancelled_caught:
                if self.transaction.client_left:
                    ended = "client disconnected"
                else:
                    self.log.warning("session cut short by shutdown")
                    farewell, ended = SHUTTING_DOWN, "shutdown"
            self._log_actions(self.session.abort(ended))
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
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                await self.client.aclose()
            self.log.debug("connection closed")

    async def _run(self) -> None:
        if self.config.xclient:
            # XCLIENT NAME= needs the client's host name: look it up while connecting.
            name = "[TEMPUNAVAIL]"

            async def look_up() -> None:
                nonlocal name
                name = await client_host_name(self.info.client)

            with single_error():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(look_up)
                    await self.upstream.connect()
            self.session.policy = attrs.evolve(self.session.policy, xclient_name=name)
        else:
            await self.upstream.connect()
        [banner] = await self.upstream.exchange((), replies=1)
        await self._perform(self.session.greeting(banner))
        while True:
            try:
                line = await self.client.next_command()
            except Drained:
                self.log.info("shutting down: closing an idle session")
                await self.client.send(SHUTTING_DOWN)
                raise _Closing from None
            if isinstance(line, LineTooLong):
                self.log.debug("CLIENT < (%d bytes discarded: line too long)", line.length)
                await self._perform(self.session.line_too_long())
                continue
            reason = check_command_line(line)
            if reason is not None:
                # NUL, bare CR, controls: answered here, never forwarded (issue 16, case 7).
                await self._perform(self.session.bad_command_line(reason))
                continue
            in_auth = self.session.in_auth
            command = parse_command(line)
            if self.trace:
                self.log.debug("CLIENT < %s", show_command(line, command, in_auth))
            await self._perform(self.session.command(command))

    async def _perform(self, actions: list[Action]) -> None:
        """Do the session's actions in order; an upstream reply goes back to the session,
        whose next actions are done before the rest of this list."""
        for action in actions:
            if isinstance(action, SendClient):
                if not self.session.in_message:
                    # The message's fate is decided: its spools go before the client hears it.
                    self.transaction.close()
                await self.client.send(action.reply)
            elif isinstance(action, SendUpstream):
                secret = action.purpose is Purpose.AUTH_CONTINUATION
                trace = show_command(action.line, action.command, secret) if self.trace else None
                # A bare stream cannot be peeked at: watch it while a message is on its way.
                watching = self.info.socket is None and self.session.in_message
                async with self.client.watch(self.transaction.left) if watching else nullcontext():
                    reply = await self.upstream.command(Outgoing(action.line, trace))
                await self._perform(self.session.upstream_reply(reply))
            elif isinstance(action, ReceiveMessage):
                if action.stream:
                    reply = await self.transaction.stream(action)
                    await self._perform(self.session.upstream_reply(reply))
                else:
                    await self._perform(await self.transaction.receive(action))
            elif isinstance(action, RunFilter):
                await self._perform(await self.transaction.filter())
            elif isinstance(action, SendMessage):
                reply = await self.transaction.replay()
                await self._perform(self.session.upstream_reply(reply))
            elif isinstance(action, SkipBytes):
                await self.client.skip(action)
            elif isinstance(action, StartTLS):
                assert self.config.tls_context is not None
                await self.client.start_tls(action, self.config.tls_context)
                self.session.tls_started()
            elif isinstance(action, Summary | Log):
                self._log_actions([action])
            elif isinstance(action, Close):
                raise _Closing
            else:
                assert_never(action)

    def _log_actions(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Summary):
                self.log.info("%s", action.text)
            elif isinstance(action, Log):
                self.log.log(action.level, "%s", action.message)
