"""Doing the session's actions: the relay's half of the sans-IO session.

`Performer` does each action the session returns with the part of the connection that
owns what it needs (client channel, upstream, transaction, milters) and hands what came of
it (an upstream reply, a filter's verdict, the milters' decision) back to the session,
whose next actions are done before the rest.  It also sends the client's pipelined MAIL and
RCPT commands upstream as one group (RFC 2920) and asks the milters at each command stage.
"""

from __future__ import annotations

import logging
import ssl
from typing import assert_never

import trio

from trio_proxsmtp.common.log_format import structured
from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.common.trace import show_command
from trio_proxsmtp.protocol.session.actions import (
    AbortMilters,
    Action,
    AskMilters,
    AskPolicy,
    Close,
    Log,
    Purpose,
    ReceiveChunk,
    ReceiveMessage,
    RunFilter,
    RunMilters,
    SendClient,
    SendMessage,
    SendUpstream,
    SkipBytes,
    StartTLS,
    StartUpstreamTLS,
    Summary,
)
from trio_proxsmtp.protocol.session.events import (
    ClientCommand,
    ClientTLSStarted,
    MiltersDecided,
    PolicyDecided,
    UpstreamReply,
    UpstreamTLSStarted,
)
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.smtp.commands import Verb, parse_command
from trio_proxsmtp.protocol.smtp.reader import Line
from trio_proxsmtp.protocol.smtp.replies import reply_from_text
from trio_proxsmtp.relay.client_channel import ClientChannel
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.endings import Closing
from trio_proxsmtp.relay.policy_request import policy_request, rcpt_address
from trio_proxsmtp.relay.stages_run import run_filter_stage, run_milters_stage
from trio_proxsmtp.relay.transaction import Transaction
from trio_proxsmtp.relay.upstream import Outgoing, Upstream
from trio_proxsmtp.stages.milter.macros import tls_macros
from trio_proxsmtp.stages.milter.milters import Milters
from trio_proxsmtp.stages.policy import PolicyClient

__all__ = ["Performer"]

# What a message's end under TLS does inside one client watch: our DATA or a replayed
# envelope, the replay (and the log lines between); a client read or a reply to the
# client ends the watch first.
_WATCHED = (SendUpstream, SendMessage, Summary, Log)


class Performer:
    """Does one connection's session actions; see the module docstring."""

    metrics: Metrics = NULL_METRICS  # the summaries' counts (set by the connection)

    def __init__(
        self,
        session: Session,
        client: ClientChannel,
        upstream: Upstream,
        transaction: Transaction,
        info: ClientInfo,
        conn_id: int | str,
        log: logging.LoggerAdapter[logging.Logger],
        tls_context: ssl.SSLContext | None,
    ) -> None:
        self.session = session
        self.client = client
        self.upstream = upstream
        self.transaction = transaction
        self.info = info
        self.conn_id = conn_id
        self.log = log
        self.trace = log.isEnabledFor(logging.DEBUG)
        self.tls_context = tls_context  # STARTTLS towards the client
        self.milters: Milters | None = None  # while the connection runs, if configured
        self.policy: PolicyClient | None = None  # PolicyService, if configured

    # -- PIPELINING towards the upstream (RFC 2920) --------------------------------------

    def upstream_pipelining(self, actions: list[Action]) -> bool:
        """Whether `actions` (the session's answer to one command) start a group: a MAIL
        or RCPT forwarded as is, with another MAIL/RCPT already buffered behind it, to a
        next server that offers PIPELINING.  A lone command still waits for its reply."""
        if len(actions) != 1 or not isinstance(actions[0], SendUpstream):
            return False
        action = actions[0]
        if action.purpose is not Purpose.COMMAND or action.command is None:
            return False
        line = self.client.reader.peek_line()
        if line is None:
            return False  # nothing buffered behind it (a lock-step client): no group
        return self.session.pipelinable(action.command) and self.session.pipelinable(
            parse_command(line)
        )

    async def send_group(self, first: list[Action]) -> None:
        """The client's buffered MAIL/RCPT commands go upstream in one write; the replies
        are read and relayed in order, each to its own command (B1).  DATA never joins:
        the session answers it once every reply of the group is in, so a group whose
        recipients all failed gets 554, never 354 (docs/behaviour.md §11)."""
        group = [action for action in first if isinstance(action, SendUpstream)]
        while True:
            line = self.client.reader.peek_line()
            if line is None or not self.session.pipelinable(command := parse_command(line)):
                break
            taken = self.client.reader.next_event()
            assert isinstance(taken, Line) and taken.data == line
            if self.trace:
                self.log.debug("CLIENT < %s", show_command(line, command, False))
            [action] = self.session.handle(ClientCommand(command))
            assert isinstance(action, SendUpstream), action
            group.append(action)
        items = [
            Outgoing(a.line, show_command(a.line, a.command, False) if self.trace else None)
            for a in group
        ]
        for reply in await self.upstream.exchange(items):
            await self.perform(self.session.handle(UpstreamReply(reply)))

    # -- the actions ----------------------------------------------------------------------

    async def perform(self, actions: list[Action], watched: list[Action] | None = None) -> None:
        """Do the session's actions in order; an upstream reply goes back to the session,
        whose next actions are done before the rest of this list.  (A loop over a work
        list, not a recursion: several actions a message, each a coroutine less.)
        `watched`: an outer call's work list, done here under its client watch up to the
        first action that is not for a message's end (`_WATCHED`)."""
        todo = actions[::-1] if watched is None else watched  # popped from the end
        while todo:
            action = todo.pop()
            if watched is not None and not isinstance(action, _WATCHED):
                todo.append(action)  # the outer call does it, once the watch is over
                return
            if isinstance(action, SendClient):
                if not self.session.in_message:
                    # The message's fate is decided: its spools go before the client hears it.
                    self.transaction.close()
                await self.client.send(action.reply)
                continue
            if isinstance(action, SendUpstream):
                secret = action.purpose is Purpose.AUTH_CONTINUATION
                trace = show_command(action.line, action.command, secret) if self.trace else None
                # A stream that cannot be peeked at (no socket, TLS) is watched while a
                # message is on its way.
                watching = not self.client.peekable and self.session.in_message
                # Only our DATA's time counts (the message's upstream delay): no clock
                # reads for the other commands.
                timed = action.purpose is Purpose.DATA
                started = trio.current_time() if timed else 0.0
                if watching and watched is None:
                    # (Our DATA, a replayed envelope: under MessageTimeOut.)  One watch for
                    # the message's end: the replay's and the commit's nest in it
                    # (ClientChannel.watch); a watch task each cost ~380 Python calls, a
                    # third of a plain message's (bench/PROFILE.md, phase 5).
                    async with self.client.watch(self.transaction.left):
                        with self.transaction.deadline.stage("the next server's reply"):
                            reply = await self.upstream.command(Outgoing(action.line, trace))
                        seconds = trio.current_time() - started if timed else 0.0
                        todo.extend(
                            reversed(self.session.handle(UpstreamReply(reply, seconds=seconds)))
                        )
                        await self.perform([], todo)
                    continue
                if self.session.in_message:  # (under TLS: inside the watch above)
                    with self.transaction.deadline.stage("the next server's reply"):
                        reply = await self.upstream.command(Outgoing(action.line, trace))
                else:
                    reply = await self.upstream.command(Outgoing(action.line, trace))
                seconds = trio.current_time() - started if timed else 0.0
                after = self.session.handle(UpstreamReply(reply, seconds=seconds))
            elif isinstance(action, Summary | Log):
                self.log_actions([action])
                continue
            elif isinstance(action, ReceiveMessage):
                if action.stream:
                    after = await self.transaction.stream(action)
                else:
                    after = await self.transaction.receive(action)
            elif isinstance(action, SendMessage):
                started = trio.current_time()
                with self.transaction.deadline.stage("the replay"):
                    reply = await self.transaction.replay(action)
                seconds = trio.current_time() - started
                after = self.session.handle(UpstreamReply(reply, seconds=seconds))
            elif isinstance(action, RunFilter):
                # Each stage from the client's final "." to its reply runs under
                # MessageTimeOut (relay/message_deadline.py, docs/behaviour.md §8.1).
                with self.transaction.deadline.stage("the filter"):
                    after = await run_filter_stage(self.transaction)
            elif isinstance(action, ReceiveChunk):
                after = await self.transaction.receive_chunk(action)
            elif isinstance(action, StartUpstreamTLS):
                await self.upstream.start_tls()
                after = self.session.handle(UpstreamTLSStarted(action.command))
            elif isinstance(action, AskMilters):
                after = await self._ask_milters(action)
            elif isinstance(action, AskPolicy):
                after = await self._ask_policy(action)
            elif isinstance(action, AbortMilters):
                if self.milters is not None:
                    await self.milters.abort()
                continue
            elif isinstance(action, RunMilters):
                assert self.milters is not None
                with self.transaction.deadline.stage("the milters"):
                    after = await run_milters_stage(self.transaction, self.milters)
            elif isinstance(action, SkipBytes):
                await self.client.skip(action)
                continue
            elif isinstance(action, StartTLS):
                assert self.tls_context is not None
                await self.client.start_tls(action, self.tls_context)
                self.session.handle(ClientTLSStarted())
                continue
            elif isinstance(action, Close):
                raise Closing
            else:
                assert_never(action)
            todo.extend(reversed(after))

    async def _ask_milters(self, action: AskMilters) -> list[Action]:
        """A client command's milter stage (HELO/EHLO, MAIL, RCPT, DATA), then its fate."""
        milters = self.milters
        assert milters is not None
        command = action.command
        verb = command.verb
        if verb in (Verb.HELO, Verb.EHLO):
            name = command.argument.split(None, 1)[0] if command.argument else ""
            decision = await milters.helo(name, tls=tls_macros(self.client.stream))
        elif verb is Verb.MAIL:
            sender = command.address or "<>"
            decision = await milters.mail(sender, command.params, queue_id=self._queue_id())
        elif verb is Verb.RCPT:
            decision = await milters.rcpt(command.address or command.argument, command.params)
        else:
            decision = await milters.data()
        reply = reply_from_text(decision.reply) if decision.reply else None
        return self.session.handle(MiltersDecided(action, decision.kind, reply, decision.milter))

    def _queue_id(self) -> str:
        """The milters' "i" macro and PolicyService's queue_id: unique per message of this
        process (connection id + the message's number on the connection)."""
        conn_id = self.conn_id if isinstance(self.conn_id, str) else f"{self.conn_id:06X}"
        return f"{conn_id}{self.session.messages + 1:04X}"

    async def _ask_policy(self, action: AskPolicy) -> list[Action]:
        """A client's RCPT asked of PolicyService (docs/behaviour.md §11.9), then its fate."""
        assert self.policy is not None
        request = policy_request(self.session, self.client, action.command, self._queue_id())
        verdict = await self.policy.ask(request.attributes(), rcpt_address(action.command))
        return self.session.handle(PolicyDecided(action, verdict))

    def log_actions(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Summary):
                # Formatted only if printed (Summary.__str__, and the fields for json and
                # logfmt: a method, called by the formatter).
                self.log.info("%s", action, extra=structured("summary", action.message.fields))
                self.metrics.message_done(
                    action.outcome.value, action.upstream_code, action.message.size
                )
            elif isinstance(action, Log):
                self.log.log(action.level, "%s", action.message)
