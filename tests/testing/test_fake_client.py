"""FakeClient against scripted peers: what it reads, how it fails, what it returns."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_proxsmtp.protocol.errors import RemoteProtocolError
from trio_proxsmtp.testing import FakeClient, FakeUpstream, dot_stuff, open_client


async def test_read_eof_returns_bytes_after_last_reply() -> None:
    with trio.fail_after(10):
        client_stream, server = trio.testing.memory_stream_pair()
        c = FakeClient(client_stream)
        await server.send_all(b"220 hi\r\n221 bye\r\n421 half")
        await server.aclose()
        assert (await c.greeting()).text == "220 hi"
        assert await c.read_eof() == b"221 bye\r\n421 half"
        assert c.closed and c.received == b"220 hi\r\n221 bye\r\n421 half"
        # read_eof does not consume: complete replies can still be read, then EOF.
        assert (await c.read_reply()).text == "221 bye"
        with pytest.raises(EOFError):
            await c.read_reply()


async def test_eof_in_the_middle_of_a_reply() -> None:
    with trio.fail_after(10):
        client_stream, server = trio.testing.memory_stream_pair()
        c = FakeClient(client_stream)
        await server.send_all(b"250-first\r\n")
        await server.aclose()
        with pytest.raises(EOFError):
            await c.read_reply()


async def test_read_reply_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        client_stream, _server = trio.testing.memory_stream_pair()
        c = FakeClient(client_stream, timeout=7)
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            await c.read_reply()
        assert trio.current_time() == start + 7
        with pytest.raises(trio.TooSlowError):
            await c.read_reply(timeout=2)
        assert trio.current_time() == start + 9


async def test_garbage_is_a_protocol_error() -> None:
    with trio.fail_after(10):
        client_stream, server = trio.testing.memory_stream_pair()
        c = FakeClient(client_stream)
        await server.send_all(b"hello there\r\n")
        with pytest.raises(RemoteProtocolError):
            await c.read_reply()


async def test_command_adds_crlf_once_and_reads_greeting_first() -> None:
    with trio.fail_after(10):
        async with FakeUpstream() as up, open_client("127.0.0.1", up.port) as c:
            assert (await c.command("NOOP")).code == 250
            assert (await c.command(b"NOOP\r\n")).code == 250
            with pytest.raises(RuntimeError):
                await c.greeting()
        assert c.sent == b"NOOP\r\nNOOP\r\n"
        assert [r.code for r in c.replies] == [220, 250, 250]


async def test_send_message_stops_like_a_real_client() -> None:
    with trio.fail_after(10):
        async with FakeUpstream() as up, open_client("127.0.0.1", up.port) as c:
            no_rcpt = await c.send_message("s@x", ["reject@x"], b"m\r\n", helo="h.example")
            await c.command("RSET")
            ok = await c.send_message("s@x", ["r@x"], b"m\r\n")
        assert [r.code for r in no_rcpt] == [250, 550]
        assert [r.code for r in ok] == [250, 250, 354, 250]
        assert up.commands.count(b"EHLO h.example") == 1 and b"DATA" in up.commands


def test_dot_stuff() -> None:
    assert dot_stuff(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert dot_stuff(b"x") == b"x\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


async def test_start_message_stops_after_data_and_the_message_is_yours() -> None:
    with trio.fail_after(10):
        async with FakeUpstream() as up, open_client("127.0.0.1", up.port) as client:
            replies = await client.start_message("a@x", ["b@x", "c@x"], helo="h")
            assert [r.code for r in replies] == [250, 250, 250, 354]
            assert up.transactions == []
            await client.send(b"Subject: mine\r\n\r\nbody\r\n.\r\n")
            assert (await client.read_reply()).code == 250
            await up.wait_until(lambda: len(up.transactions) == 1)
    assert up.transactions[0].message == b"Subject: mine\r\n\r\nbody\r\n"
    assert up.transactions[0].rcpt_to == ["b@x", "c@x"]
