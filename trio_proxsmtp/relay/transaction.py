"""One message's life in the relay: the spool and the replay upstream (the stages between,
filter, scanners and milters, are `stages_run.py`'s).

`Transaction` owns the spool files of the current message and removes them on every path
(`close`, before the client hears the message's fate and when the connection ends).  It
reads the message through the client channel and sends it through the upstream, but each
step returns the session's next actions: it never decides.  It reads `TransactionSettings`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math

import trio

from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.protocol.message.edit import (
    EditedMessage,
)
from trio_proxsmtp.protocol.message.header import HeaderInserter, expand_header
from trio_proxsmtp.protocol.message.prepend import Prepender, with_prepended
from trio_proxsmtp.protocol.session.actions import Action, ReceiveChunk, SendMessage
from trio_proxsmtp.protocol.session.events import (
    ChunkReceived,
    MessageFailed,
    MessageReceived,
    MessageStreamed,
    UpstreamReply,
)
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.session.policy_service import prepended_headers
from trio_proxsmtp.protocol.smtp.bdat import BdatSender
from trio_proxsmtp.protocol.smtp.data import DataSender, LineEnds
from trio_proxsmtp.protocol.smtp.replies import LOCAL_ERROR, Reply
from trio_proxsmtp.relay.client_channel import ClientChannel, ClientGone
from trio_proxsmtp.relay.message_deadline import MessageDeadline
from trio_proxsmtp.relay.settings import TransactionSettings
from trio_proxsmtp.relay.upstream import Outgoing, Upstream
from trio_proxsmtp.stages.settings import FilterType
from trio_proxsmtp.stages.spool import Spool

__all__ = ["Transaction"]

LEFT_AFTER_COMMIT = "client disconnected after its message went to the next server"
# The replay sends its last chunk with the final "." in one write up to this size; a
# larger one goes alone first (joining it to the "." would copy it).
JOIN_LIMIT = 64 * 1024


class Transaction:
    """The current message's spools and the steps that use them; see the module docstring."""

    metrics: Metrics = NULL_METRICS  # filter runs (set by the connection)

    def __init__(
        self,
        settings: TransactionSettings,
        session: Session,
        client: ClientChannel,
        upstream: Upstream,
        log: logging.LoggerAdapter[logging.Logger],
        on_client_left: trio.CancelScope,
    ) -> None:
        self.settings = settings
        self.session = session
        self.client = client
        self.upstream = upstream
        self.log = log
        self.trace = log.isEnabledFor(logging.DEBUG)
        self._connection_scope = on_client_left
        self.client_left = False
        self.spool: Spool | None = None
        self.output: Spool | None = None  # the filter's rewritten message, if any
        self.edited: EditedMessage | None = None  # the milters' edits, over one of those
        self.chunked = 0  # BDAT: message bytes received so far (past the limit too)
        self.chunk_error: str | None = None  # BDAT: the spool failed; reported at LAST
        self.chunks_started: float | None = None  # BDAT: when the first chunk began
        self.dot_lines = True  # DATA: a line of the message may start with a dot
        # When the message under way began (its reading, or its first chunk): the time a
        # message cut short had run (docs/behaviour.md §9.2).
        self.message_started: float | None = None
        self.left_at: float | None = None  # when the watcher saw the client leave
        self.deadline = MessageDeadline(settings.message_timeout)  # MessageTimeOut

    def close(self) -> None:
        """Remove the spool files (idempotent)."""
        for spool in (self.output, self.spool):
            if spool is not None:
                spool.close()
        self.output = self.spool = None
        self.edited = None
        self.chunked, self.chunk_error, self.chunks_started = 0, None, None
        self.message_started = None
        self.dot_lines = True
        self.deadline.at = math.inf

    def elapsed(self) -> float:
        """For a message cut short: the seconds it ran, from its start to its client
        leaving (or now), 0.0 when none was under way."""
        started = self.message_started
        if started is None:
            return 0.0
        return (self.left_at if self.left_at is not None else trio.current_time()) - started

    def left(self) -> None:
        """The client left in the middle of the message: end the connection now."""
        self.client_left = True
        self.left_at = trio.current_time()  # (before the filter's kill: not its time)
        self._connection_scope.cancel()

    # -- receiving ----------------------------------------------------------------------

    def _open_spool(self) -> str | None:
        """A new spool for the message in `self.spool`; the error (logged), or None."""
        try:
            # Only a file-mode filter needs the message by name ($EMAIL).
            named = self.settings.filter_type is FilterType.FILE
            self.spool = Spool.create(self.settings.temp_directory, named=named)
        except OSError as exc:
            error = f"couldn't open cache file: {exc}"
            self.log.error("%s", error)
            return error
        if not self.spool.in_memory:
            self.log.debug("created cache file: %s", self.spool.path)
        return None

    async def receive(self, action: Action) -> list[Action]:
        """Spool the client's message up to <CRLF>.<CRLF>; always read to the end (B2)."""
        error = self._open_spool()

        # Past the size limit (MaxMessageSize, the upstream's SIZE) the message is refused
        # (552) once read to its end: keep reading, stop writing, so a huge message cannot
        # fill the disk for nothing.
        limit = self.session.size_limit
        reader = self.client.reader

        async def spool(body: bytes, done: bool) -> None:
            nonlocal error
            if limit is not None and reader.message_size > limit:
                return
            if self.spool is not None and error is None:
                try:
                    self.spool.write(body)
                except OSError as exc:
                    error = f"couldn't write cache file: {exc}"
                    self.log.error("%s", error)

        started = self.message_started = trio.current_time()
        async with self.upstream.keepalives():
            size = await self.client.read_message(action, spool)
        self.dot_lines = reader.message_dot_lines
        now = trio.current_time()
        seconds = now - started
        self.deadline.start(now)
        if error is None and self.spool is not None:
            try:
                self.spool.finish()
            except OSError as exc:
                error = f"couldn't write cache file: {exc}"
                self.log.error("%s", error)
        if error is not None:
            return self.session.handle(
                MessageFailed(LOCAL_ERROR, error, size=size, seconds=seconds)
            )
        self.log.debug("received %d message bytes", size)
        return self.session.handle(MessageReceived(size, seconds=seconds))

    async def receive_chunk(self, action: ReceiveChunk) -> list[Action]:
        """Spool one BDAT chunk (RFC 3030), byte for byte: BDAT has no stuffing and no
        terminator.  Past the size limit the chunks are still read, not stored (552 at
        LAST, as for DATA); a spool error is reported at LAST too."""
        if self.spool is None and self.chunk_error is None:
            self.chunk_error = self._open_spool()
        limit = self.session.size_limit

        async def spool(data: bytes) -> None:
            self.chunked += len(data)
            if limit is not None and self.chunked > limit:
                return
            if self.spool is not None and self.chunk_error is None:
                try:
                    self.spool.write(data)
                except OSError as exc:
                    self.chunk_error = f"couldn't write cache file: {exc}"
                    self.log.error("%s", self.chunk_error)

        if self.chunks_started is None:
            self.chunks_started = self.message_started = trio.current_time()
        async with self.upstream.keepalives():
            await self.client.read_chunk(action, spool)
        # The message's receive time: from its first chunk to the end of this one.
        now = trio.current_time()
        seconds = now - self.chunks_started
        if not action.last:
            return self.session.handle(
                ChunkReceived(action.size, False, self.chunked, seconds=seconds)
            )
        self.deadline.start(now)
        if self.chunk_error is None and self.spool is not None:
            try:
                self.spool.finish()
            except OSError as exc:
                self.chunk_error = f"couldn't write cache file: {exc}"
                self.log.error("%s", self.chunk_error)
        if self.chunk_error is not None:
            return self.session.handle(
                MessageFailed(LOCAL_ERROR, self.chunk_error, size=self.chunked, seconds=seconds)
            )
        self.log.debug("received %d message bytes in BDAT chunks", self.chunked)
        return self.session.handle(ChunkReceived(action.size, True, self.chunked, seconds=seconds))

    async def stream(self, action: Action) -> list[Action]:
        """Skip mode: the client's message goes straight upstream, unfiltered; the
        upstream's reply to it goes to the session (docs/behaviour.md)."""
        sender = DataSender(clean=True)  # the DATA reader's output: CRLF-normalised
        item = Outgoing(b"")

        async def forward(body: bytes, done: bool) -> None:
            nonlocal item
            out = sender.feed(body)
            if done:
                item = Outgoing(out + sender.finish())
            elif out:
                await self.upstream.send(out)

        started = self.message_started = trio.current_time()
        size = await self.client.read_message(action, forward)
        self.log.debug("skipped %d data bytes", size)
        self.session.handle(MessageStreamed(size, seconds=trio.current_time() - started))
        started = trio.current_time()
        reply = await self.upstream.command(item)
        return self.session.handle(UpstreamReply(reply, seconds=trio.current_time() - started))

    # -- the replay ---------------------------------------------------------------------

    async def replay(self, action: SendMessage) -> Reply:
        """Replay the spool: header inserted, dot-stuffed, CRLF-clean, then the final "."
        and the upstream's reply to it."""
        spooled = self.output or self.spool
        assert spooled is not None
        message: Spool | EditedMessage = self.edited or spooled
        if action.bdat:
            return await self._replay_bdat(message)
        inserter = self._header_inserter()
        # The client's own DATA, as spooled, is CRLF-normalised already: skip the check (the
        # inserters add only CRLF-clean lines, at line starts: expand_header cleans the
        # Header, PREPEND texts hold no CR or LF), and the search for dot lines if its
        # reader found none and nothing is inserted (a Header line may start with a dot;
        # docs/behaviour.md §5.1).
        clean = self.output is None and self.edited is None and self.chunks_started is None
        dot_lines = self.dot_lines or inserter is not None  # (DataSender: all when unclean)
        sender = DataSender(clean=clean, dot_lines=dot_lines)
        sent = 0
        pending = b""  # held back one chunk, so the last one goes out with the "."
        # A plain socket is peeked at before the final "."; another stream is watched.
        watching = not self.client.peekable
        async with self.client.watch(self.left) if watching else contextlib.nullcontext():
            for chunk in message.chunks():
                if pending:
                    await self.upstream.send(pending)
                    sent += len(pending)
                pending = sender.feed(inserter.feed(chunk) if inserter is not None else chunk)
            tail = inserter.finish() if inserter is not None else b""
            end = sender.feed(tail) + sender.finish()
            if len(pending) > JOIN_LIMIT:  # a large last chunk goes alone: not copied
                await self.upstream.send(pending)
                sent += len(pending)
                pending = b""
            data = pending + end if pending else end
            # The final "." commits the message: not if its client has left meanwhile.
            if self.client.has_left():
                raise ClientGone("closed the connection before its message was answered")
        return await self._commit(Outgoing(data, f". ({sent + len(data)} bytes sent)"))

    async def _replay_bdat(self, message: Spool | EditedMessage) -> Reply:
        """The message as BDAT chunks (RFC 3030): no stuffing, but no bare CR or LF either
        (docs/behaviour.md §5.1: the spool holds the client's or the filter's bytes as
        they came); each chunk but the LAST is answered before the next goes; the first
        refusal ends the message."""
        sender = BdatSender()
        lines = LineEnds()
        inserter = self._header_inserter()
        sent = 0
        pending: list[bytes] = []  # frames held back, so the LAST one is checked before
        watching = not self.client.peekable
        async with self.client.watch(self.left) if watching else contextlib.nullcontext():
            for chunk in message.chunks():
                for frame in pending:
                    reply = await self.upstream.command(Outgoing(frame, frame_trace(frame)))
                    sent += len(frame)
                    if not reply.is_positive:
                        return reply
                pending = sender.feed(
                    lines.feed(inserter.feed(chunk) if inserter is not None else chunk)
                )
            tail = inserter.finish() if inserter is not None else b""
            for frame in [*pending, *sender.feed(lines.feed(tail) + lines.finish())]:
                reply = await self.upstream.command(Outgoing(frame, frame_trace(frame)))
                sent += len(frame)
                if not reply.is_positive:
                    return reply
            last = sender.finish()
            # The LAST chunk commits the message: not if its client has left meanwhile.
            if self.client.has_left():
                raise ClientGone("closed the connection before its message was answered")
        return await self._commit(Outgoing(last, frame_trace(last)))

    async def _commit(self, item: Outgoing) -> Reply:
        """The replay's last exchange, which commits the message: MessageTimeOut is lifted;
        a client leaving before the reply is the duplicate window (behaviour.md §8.1)."""
        self.deadline.lift()
        if self.client.peekable:
            reply = await self.upstream.command(item)
            if self.client.has_left():  # (one peek a message)
                self._left_after_commit()
            return reply
        async with self.client.watch(self._left_after_commit):
            return await self.upstream.command(item)

    def _left_after_commit(self) -> None:
        self.log.warning("%s: it may send it again (a duplicate)", LEFT_AFTER_COMMIT)
        self.metrics.left_after_commit()

    def _header_inserter(self) -> HeaderInserter | Prepender | None:
        """The Header option's inserter, PolicyService's PREPEND headers on top of it."""
        return with_prepended(prepended_headers(self.session), self._header_option())

    def _header_option(self) -> HeaderInserter | None:
        if not self.settings.header:
            return None
        header, warnings = expand_header(
            self.settings.header,
            client=self.client.info.client,
            local=self.client.info.local,
            now=datetime.datetime.now().astimezone(),
        )
        for warning in warnings:
            self.log.warning("%s", warning)
        return HeaderInserter(header) if header else None


def frame_trace(frame: bytes) -> str:
    """What the protocol trace shows for a BDAT frame: its command line, not the bytes."""
    return frame[: frame.index(b"\r\n")].decode("ascii")
