"""Attacks 7 and 10 through the relay: bytes no command may hold, and floods of errors.

7. `RCPT TO:<b@x>\\rNOOP\\r\\n` went upstream as one line; an upstream that splits at a bare
   CR answered twice, the stale 250 was taken as DATA's answer, the client was told 250 and
   the message was never sent.  Now such a line gets a clean 500 here and is never
   forwarded; a bare LF line end is still accepted.
10. A million empty lines were relayed upstream one by one.  Now the client is disconnected
   after HardErrorLimit error replies (ours and the upstream's)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hostile_support import MESSAGE, memory_connection

from trio_proxsmtp.protocol.smtp.commands import BAD_CHARACTER
from trio_proxsmtp.testing import FakeUpstream

TOO_MANY_ERRORS = b"421 4.7.0 Error: too many errors\r\n"


class SplitsAtBareCR(FakeUpstream):
    """A FakeUpstream that, like some servers, ends a command line at a bare CR too."""

    async def handle(self, stream: trio.abc.Stream, peer: str = "") -> None:
        await super().handle(_BareCRAsLineEnd(stream), peer)


class _BareCRAsLineEnd(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.pending_cr = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = bytes(await self.inner.receive_some(max_bytes))
        if self.pending_cr:
            data = b"\r" + data
        self.pending_cr = data.endswith(b"\r") and bool(data)
        if self.pending_cr:
            data = data[:-1]
        # A CR not followed by LF ends a line.
        return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_bare_cr_never_desynchronises_the_replies(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    up = SplitsAtBareCR()
    async with memory_connection("", up) as (client, _):
        await client.greeting()
        assert (await client.command("EHLO c")).code == 250
        assert (await client.command("MAIL FROM:<s@x>")).code == 250
        assert await client.command(b"RCPT TO:<b@x>\rNOOP") == BAD_CHARACTER
        assert (await client.command("RCPT TO:<c@x>")).code == 250
        assert (await client.command("DATA")).code == 354
        await client.send(MESSAGE + b".\r\n")
        final = await client.read_reply()
        assert (await client.command("QUIT")).code == 221
    # The client was told 250 only because the upstream really has the message.
    assert final.code == 250
    assert [t.rcpt_to for t in up.transactions] == [["c@x"]]
    assert b"NOOP" not in up.commands
    assert "refused a command line: bare CR" in caplog.text


@pytest.mark.parametrize("line", [b"NOOP\x00\r\n", b"NO\x1bOP\r\n", b"NOOP\rX\r\n"])
async def test_forbidden_bytes_get_500_and_are_never_forwarded(
    autojump_clock: trio.testing.MockClock, line: bytes
) -> None:
    async with FakeUpstream() as up, memory_connection("", up) as (client, _):
        await client.greeting()
        assert await client.command(line) == BAD_CHARACTER
        assert (await client.command(b"NOOP\n")).code == 250  # a bare LF end is fine
    assert up.commands == [b"NOOP"]


async def test_a_flood_of_empty_lines_is_cut_after_the_hard_error_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with FakeUpstream() as up, memory_connection("", up) as (client, _):
        await client.greeting()

        async def flood() -> None:
            chunk = b"\r\n" * 32768
            try:
                for _ in range(1_000_000 // 32768 + 1):
                    await client.send(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await client.read_eof()
            nursery.cancel_scope.cancel()
    lines = bytes(client.received).splitlines(keepends=True)[1:]  # after the greeting
    assert lines[:20] == [b"502 5.5.2 Error: command not recognized\r\n"] * 20
    assert lines[20:] == [TOO_MANY_ERRORS]
    assert len(up.commands) == 20  # not relayed line by line


async def test_the_proxys_own_error_replies_count_toward_the_hard_error_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A 500 for a forbidden byte is answered by the proxy itself (never forwarded): it
    # counts as much as an error of the next server's, and the 421 follows the limit.
    async with FakeUpstream() as up, memory_connection("HardErrorLimit: 3", up) as (client, _):
        await client.greeting()
        for _ in range(3):
            await client.send(b"NOOP\x00\r\n")
            assert (await client.read_reply()).code == 500
        assert (await client.read_reply()).to_bytes() == TOO_MANY_ERRORS
        assert await client.read_eof() == b""
    assert up.commands == []


async def test_a_delivered_message_resets_the_error_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with FakeUpstream() as up, memory_connection("HardErrorLimit: 5", up) as (client, _):
        await client.greeting()
        for _ in range(4):
            assert (await client.command("BOGUS")).code == 502
        assert (await client.send_message("s@x", ["r@x"], MESSAGE))[-1].code == 250
        for _ in range(4):
            assert (await client.command("BOGUS")).code == 502
        assert (await client.command("NOOP")).code == 250  # still connected
        assert (await client.command("BOGUS")).code == 502  # the fifth since the message
        assert (await client.read_reply()).to_bytes() == TOO_MANY_ERRORS
        assert await client.read_eof() == b""
    assert len(up.transactions) == 1


async def test_auth_continuation_with_a_bad_byte_cancels_the_exchange(
    autojump_clock: trio.testing.MockClock,
) -> None:
    up = FakeUpstream(replies={"AUTH": "334 VXNlcm5hbWU6", "*": "501 5.7.0 Authentication aborted"})
    async with up, memory_connection("", up) as (client, _):
        await client.greeting()
        assert (await client.command("EHLO c")).code == 250
        assert (await client.command("AUTH LOGIN")).code == 334
        reply = await client.command(b"dXNl\x00cg==")
        assert reply.code == 501  # the upstream's answer to our "*": AUTH is over
        assert (await client.command("NOOP")).code == 250
    assert b"*" in up.commands
    assert not any(b"\x00" in c for c in up.commands)
