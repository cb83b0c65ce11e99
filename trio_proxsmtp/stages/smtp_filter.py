"""`FilterType: smtp` (docs/behaviour.md §11.17): the filter is an SMTP server.  After the
spool, one SMTP session to it (EHLO, XCLIENT when offered, MAIL, every RCPT, DATA, the
message, QUIT); a 250 to the final dot lets the message go on unchanged, the first
refusal is the client's reply, and a server that is unreachable, slow (FilterTimeout bounds
the whole session) or broken is a temporary failure.  No STARTTLS towards it: it is a
local content filter, reached on loopback or a unix socket."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence

import attrs
import trio

from trio_proxsmtp.common.address import AddressKind, parse_address
from trio_proxsmtp.protocol.errors import RemoteProtocolError
from trio_proxsmtp.protocol.session.xclient import address_value, helo_value
from trio_proxsmtp.protocol.smtp.data import DataSender
from trio_proxsmtp.protocol.smtp.ehlo import Extensions, parse_extensions
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.protocol.smtp.reply_parser import ReplyParser
from trio_proxsmtp.stages.filter.verdict import FilterVerdict, FilterVerdictKind, local_error
from trio_proxsmtp.stages.settings import FilterSpec
from trio_proxsmtp.stages.spool import Spool

__all__ = ["SmtpEnvelope", "run_smtp_filter"]

DEFAULT_PORT = 25


class _Broken(Exception):
    """The filter server failed us: a temporary failure with this detail."""


class _Refused(Exception):
    def __init__(self, stage: str, reply: Reply) -> None:
        super().__init__(stage)
        self.stage = stage
        self.reply = reply


@attrs.frozen
class SmtpEnvelope:
    """What the filter server is told: the client's address and HELO (for XCLIENT), the
    envelope as the next server accepted it (addresses without brackets)."""

    sender: str
    recipients: Sequence[str]
    client_address: str | None = None
    client_helo: str | None = None


async def run_smtp_filter(spec: FilterSpec, spool: Spool, envelope: SmtpEnvelope) -> FilterVerdict:
    """The filter server's verdict on the spooled message (never raises for its faults)."""
    try:
        with trio.fail_after(spec.timeout):
            await _session(spec.command, spool, envelope)
    except trio.TooSlowError:
        return local_error(f"smtp filter timed out after {spec.timeout:g}s", timed_out=True)
    except _Broken as exc:
        return local_error(f"smtp filter: {exc}")
    except _Refused as refused:
        status = "REJECTED" if refused.reply.code >= 500 else "DEFERRED"
        return FilterVerdict(
            kind=FilterVerdictKind.REJECT,
            reply=refused.reply,
            message=None,
            status=status,
            detail=f"smtp filter refused at {refused.stage}: {refused.reply.code}",
        )
    return FilterVerdict(FilterVerdictKind.ACCEPT, None, spool, "FILTERED", "smtp filter: 250")


async def _connect(where: str) -> trio.abc.Stream:
    try:
        address = parse_address(where, DEFAULT_PORT)
    except ValueError as exc:
        raise _Broken(f"bad address {where!r}: {exc}") from None
    try:
        if address.kind is AddressKind.UNIX:
            assert address.path is not None
            return await trio.open_unix_socket(address.path)
        return await trio.open_tcp_stream(address.host or "127.0.0.1", address.port)
    except OSError as exc:
        raise _Broken(f"cannot connect to {where}: {exc.strerror or exc}") from None


class _Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = ReplyParser()

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, OSError) as exc:
            raise _Broken(f"send failed: {exc}") from None

    async def reply(self) -> Reply:
        while True:
            try:
                reply = self.parser.next_reply()
            except RemoteProtocolError as exc:
                raise _Broken(str(exc)) from None
            if reply is not None:
                return reply
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, OSError) as exc:
                raise _Broken(f"receive failed: {exc}") from None
            if not data:
                raise _Broken("the filter server closed the connection")
            self.parser.feed(bytes(data))

    async def command(self, line: str, stage: str, *, expect: int = 2) -> Reply:
        """Send one command; its reply, or `_Refused` for a 4xx/5xx, `_Broken` for a code
        of another class than `expect`."""
        await self.send(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return self.check(await self.reply(), stage, expect)

    @staticmethod
    def check(reply: Reply, stage: str, expect: int) -> Reply:
        if reply.code // 100 == expect:
            return reply
        if reply.code >= 400:
            raise _Refused(stage, reply)
        raise _Broken(f"unexpected reply {reply.code} to {stage}")


async def _session(where: str, spool: Spool, envelope: SmtpEnvelope) -> None:
    stream = await _connect(where)
    async with stream:
        client = _Client(stream)
        try:
            await _transaction(client, spool, envelope)
        except _Refused:
            await _quit(client)
            raise
        await _quit(client)


async def _quit(client: _Client) -> None:
    """QUIT, politely and briefly: the verdict is known already."""
    with trio.move_on_after(5):
        with contextlib.suppress(_Broken, _Refused):
            await client.command("QUIT", "QUIT")


async def _transaction(client: _Client, spool: Spool, envelope: SmtpEnvelope) -> None:
    banner = await client.reply()
    if banner.code != 220:
        raise _Broken(f"banner {banner.code}: {' '.join(banner.lines)[:120]}")
    extensions = await _hello(client)
    offers_xclient = extensions is not None and extensions.has("XCLIENT")
    if offers_xclient and await _xclient(client, envelope):
        # XCLIENT restarts the session: greet again, as the client did (an EHLO sets
        # the HELO name that XCLIENT gave).
        await _hello(client, envelope.client_helo)
    await client.command(f"MAIL FROM:<{envelope.sender}>", "MAIL")
    for recipient in envelope.recipients:
        await client.command(f"RCPT TO:<{recipient}>", "RCPT")
    await client.command("DATA", "DATA", expect=3)
    sender = DataSender()
    for chunk in spool.chunks():
        out = sender.feed(chunk)
        if out:
            await client.send(out)
    await client.send(sender.finish())
    final = client.check(await client.reply(), "end of data", 2)
    if final.code != 250:  # only a 250 lets the message go on
        raise _Broken(f"unexpected reply {final.code} to end of data")


async def _hello(client: _Client, name: str | None = None) -> Extensions | None:
    """EHLO, else HELO, with our host name (or `name`): the extensions (None after HELO)."""
    name = name or socket.gethostname() or "localhost"
    await client.send(f"EHLO {name}\r\n".encode())
    reply = await client.reply()
    if reply.is_positive:
        return parse_extensions(reply)
    await client.command(f"HELO {name}", "HELO")
    return None


async def _xclient(client: _Client, envelope: SmtpEnvelope) -> bool:
    """XCLIENT ADDR= and HELO= when we know them; whether the server took it."""
    attributes: list[str] = []
    if envelope.client_address:  # as the session's XCLIENT says them, within Postfix's limits
        address = envelope.client_address.partition("%")[0]
        attributes.append(f"ADDR={address_value(address, ':' in address)}")
    if envelope.client_helo and (helo := helo_value(envelope.client_helo)) is not None:
        attributes.append(f"HELO={helo}")
    if not attributes:
        return False
    await client.send(f"XCLIENT {' '.join(attributes)}\r\n".encode())
    reply = await client.reply()
    return reply.code == 220 or reply.is_positive
