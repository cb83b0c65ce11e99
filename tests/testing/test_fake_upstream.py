"""FakeUpstream driven by FakeClient directly (no proxy in between)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.testing import (
    BANNER,
    CLOSE,
    DEFAULT_EHLO_KEYWORDS,
    END_OF_DATA,
    RESET,
    ClosePoint,
    FakeClient,
    FakeUpstream,
    Session,
    dot_stuff,
    open_client,
)
from trio_proxsmtp.testing.upstream import _unstuff

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


@asynccontextmanager
async def session(up: FakeUpstream) -> AsyncIterator[FakeClient]:
    async with up, open_client("127.0.0.1", up.port) as client:
        yield client


@asynccontextmanager
async def in_memory(up: FakeUpstream) -> AsyncIterator[FakeClient]:
    """A client linked to `up` by an in-memory stream pair: safe under autojump_clock."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(up.handle, server_stream)
        yield FakeClient(client_stream)
        nursery.cancel_scope.cancel()


async def test_default_banner_and_ehlo() -> None:
    with trio.fail_after(10):
        async with session(FakeUpstream()) as c:
            banner = await c.greeting()
            ehlo = await c.command("EHLO c")
        assert banner.code == 220 and banner.lines == ("upstream.example ESMTP",)
        assert ehlo.lines == ("upstream.example", *DEFAULT_EHLO_KEYWORDS)
        expected = b"220 upstream.example ESMTP\r\n250-upstream.example\r\n250-PIPELINING\r\n"
        assert bytes(c.received).startswith(expected)
        assert bytes(c.received).endswith(b"250-DSN\r\n250 CHUNKING\r\n")
        assert "SIZE 10240000" in ehlo.lines and "XCLIENT NAME ADDR PROTO HELO" in ehlo.lines


async def test_default_replies_to_other_verbs() -> None:
    with trio.fail_after(10):
        async with session(FakeUpstream()) as c:
            await c.greeting()
            codes = [
                (await c.command(line)).code
                for line in ("HELO c", "NOOP", "RSET", "XCLIENT ADDR=1.2.3.4", "XFORWARD NAME=x")
            ]
            codes.append((await c.command("AUTH PLAIN AGZvbwBiYXI=")).code)
            # CHUNKING is advertised: the chunk is read, and refused without a MAIL.
            await c.send(b"BDAT 10 LAST\r\n0123456789")
            codes.append((await c.read_reply()).code)
            codes.append((await c.command(b"\xff\x00garbage")).code)
            quit_reply = await c.quit()
            assert await c.read_eof() == b""
        assert codes == [250, 250, 250, 220, 250, 235, 503, 502]
        assert quit_reply.code == 221 and c.closed


async def test_transaction_recorded_byte_exact() -> None:
    with trio.fail_after(10):
        up = FakeUpstream()
        async with session(up) as c:
            replies = await c.send_message("s@x", ["r@x", "q@x"], MESSAGE)
            await c.quit()
            await c.read_eof()
        assert [r.code for r in replies] == [250, 250, 250, 354, 250]
        assert replies[-1].lines == ("2.0.0 Ok: queued as 1",)
        [t] = up.transactions
        assert (t.mail_from, t.rcpt_to, t.data, t.message) == (
            "s@x",
            ["r@x", "q@x"],
            MESSAGE,
            MESSAGE,
        )
        assert bytes(up.received) == bytes(c.sent)
        assert up.commands == [
            b"EHLO client.example",
            b"MAIL FROM:<s@x>",
            b"RCPT TO:<r@x>",
            b"RCPT TO:<q@x>",
            b"DATA",
            b"QUIT",
        ]
        assert up.connections == 1 and up.sessions[0].helo == "client.example"
        assert up.sessions[0].transactions == [t]


@pytest.mark.parametrize(
    "message",
    [
        b".leading dot\r\n..two\r\n.\r\nend\r\n",
        b"no final newline",
        b"",
        b"8-bit \xe9\xff\x00 body\r\n.\r\n",
        b"bare\nLF\n.line\n",
    ],
)
async def test_dot_stuffing_round_trip(message: bytes) -> None:
    with trio.fail_after(10):
        up = FakeUpstream()
        async with session(up) as c:
            replies = await c.send_message("s@x", ["r@x"], message)
        assert replies[-1].code == 250
        [t] = up.transactions
        assert t.data == dot_stuff(message)[:-3]
        # What the fake un-stuffs is the message, plus the CRLF the client had to add.
        assert t.message == (
            message if message.endswith(b"\n") or not message else message + b"\r\n"
        )


@given(st.binary())
def test_unstuff_inverts_dot_stuff(message: bytes) -> None:
    wire = dot_stuff(message)
    assert wire.endswith(b".\r\n")
    body = wire[:-3]
    assert b"\n.\r\n" not in b"\n" + body  # no early terminator inside
    assert _unstuff(body).removesuffix(b"\r\n") == message.removesuffix(b"\r\n")


async def test_reject_magic_and_accepted_recipients_only() -> None:
    with trio.fail_after(10):
        up = FakeUpstream()
        async with session(up) as c:
            bad_sender = await c.send_message("reject@x", ["r@x"], MESSAGE)
            replies = await c.send_message("s@x", ["a@x", "REJECT-me@x", "b@x"], MESSAGE)
        assert [r.code for r in bad_sender] == [550]
        assert [r.code for r in replies] == [250, 250, 550, 250, 354, 250]
        assert [t.rcpt_to for t in up.transactions] == [["a@x", "b@x"]]


async def test_reject_magic_can_be_turned_off() -> None:
    with trio.fail_after(10):
        up = FakeUpstream(reject_magic=False)
        async with session(up) as c:
            replies = await c.send_message("reject@x", ["reject@y"], MESSAGE)
        assert [r.code for r in replies] == [250, 250, 354, 250]
        assert up.transactions[0].rcpt_to == ["reject@y"]


async def test_sequence_errors() -> None:
    with trio.fail_after(10):
        up = FakeUpstream()
        async with session(up) as c:
            await c.greeting()
            rcpt_first = await c.command("RCPT TO:<r@x>")
            data_first = await c.command("DATA")
            await c.command("MAIL FROM:<s@x>")
            nested = await c.command("MAIL FROM:<t@x>")
            no_rcpt = await c.command("DATA")
            syntax = await c.command("MAIL s@x")
        assert (rcpt_first.code, data_first.code, nested.code) == (503, 503, 503)
        assert no_rcpt.code == 554 and syntax.code == 501
        assert up.transactions == []


async def test_banner_multi_line_and_custom_code() -> None:
    with trio.fail_after(10):
        async with session(FakeUpstream(banner="220-a\n220 b")) as c:
            assert (await c.greeting()).lines == ("a", "b")
            assert c.received == b"220-a\r\n220 b\r\n"
        async with session(FakeUpstream(banner="554 go away")) as c:
            assert (await c.greeting()).code == 554
            assert (await c.command("HELO c")).code == 250


async def test_raw_bytes_reply_is_sent_verbatim() -> None:
    with trio.fail_after(10):
        async with session(FakeUpstream(replies={"NOOP": b"250 a\n"})) as c:
            await c.greeting()
            await c.command("NOOP")
            assert c.received.endswith(b"\r\n250 a\n")


async def test_reply_overrides_fixed_and_callable() -> None:
    seen: list[tuple[bytes, int]] = []

    def rcpt(line: bytes, s: Session) -> str | None:
        seen.append((line, len(s.rcpt_to)))
        return "451 4.3.0 try later" if b"later" in line else None

    with trio.fail_after(10):
        up = FakeUpstream(replies={"rcpt": rcpt, "EHLO": "250-big\n250 small", "DATA": "451 no"})
        async with session(up) as c:
            await c.greeting()
            assert (await c.command("EHLO c")).lines == ("big", "small")
            replies = await c.send_message("s@x", ["a@x", "later@x"], MESSAGE)
        assert [r.text for r in replies] == [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "451 4.3.0 try later",
            "451 no",
        ]
        assert seen == [(b"RCPT TO:<a@x>", 0), (b"RCPT TO:<later@x>", 1)]
        assert up.transactions == []
        assert up.sessions[0].rcpt_to == ["a@x"]


async def test_end_of_data_override_decides_recording() -> None:
    with trio.fail_after(10):
        up = FakeUpstream(replies={END_OF_DATA: "554 5.7.1 spam"})
        async with session(up) as c:
            replies = await c.send_message("s@x", ["r@x"], MESSAGE)
        assert replies[-1].text == "554 5.7.1 spam"
        assert up.transactions == []

        calls = iter(["452 full", None])
        up = FakeUpstream(replies={END_OF_DATA: lambda line, s: next(calls)})
        async with session(up) as c:
            first = await c.send_message("s@x", ["r@x"], b"one\r\n")
            second = await c.send_message("s@x", ["r@x"], b"two\r\n")
        assert (first[-1].code, second[-1].code) == (452, 250)
        assert [t.message for t in up.transactions] == [b"two\r\n"]


async def test_callable_can_close() -> None:
    with trio.fail_after(10):
        up = FakeUpstream(replies={"MAIL": lambda line, s: CLOSE})
        async with session(up) as c:
            await c.greeting()
            await c.send(b"MAIL FROM:<s@x>\r\n")
            assert await c.read_eof() == b""
        assert up.commands == [b"MAIL FROM:<s@x>"]


async def test_reset_aborts_the_connection() -> None:
    with trio.fail_after(10):
        up = FakeUpstream(replies={"NOOP": RESET})
        async with session(up) as c:
            await c.greeting()
            with pytest.raises(EOFError):
                await c.command("NOOP")
            assert c.closed


@pytest.mark.parametrize(
    ("point", "expected_commands"),
    [
        (ClosePoint.AFTER_BANNER, []),
        (ClosePoint.ON_MAIL, [b"EHLO client.example", b"MAIL FROM:<s@x>"]),
        (
            ClosePoint.ON_DATA,
            [b"EHLO client.example", b"MAIL FROM:<s@x>", b"RCPT TO:<r@x>", b"DATA"],
        ),
        (
            ClosePoint.AFTER_DOT,
            [b"EHLO client.example", b"MAIL FROM:<s@x>", b"RCPT TO:<r@x>", b"DATA"],
        ),
    ],
)
async def test_close_points(point: ClosePoint, expected_commands: list[bytes]) -> None:
    with trio.fail_after(10):
        up = FakeUpstream(close_at=point)
        async with session(up) as c:
            greeting = await c.greeting()
            with pytest.raises(EOFError):
                await c.send_message("s@x", ["r@x"], MESSAGE)
            assert c.closed
        assert greeting.code == 220
        assert up.commands == expected_commands
        assert up.transactions == []
        if point is ClosePoint.AFTER_DOT:
            assert bytes(up.received).endswith(MESSAGE + b".\r\n")


async def test_long_line_gets_500_and_session_continues() -> None:
    with trio.fail_after(10):
        up = FakeUpstream(max_line=1000)
        async with session(up) as c:
            await c.greeting()
            too_long = await c.command(b"NOOP " + b"x" * 5000)
            after = await c.command("NOOP")
        assert too_long.code == 500 and after.code == 250
        assert up.commands == [b"NOOP"]


async def test_long_data_lines_are_kept_whole() -> None:
    with trio.fail_after(10):
        up = FakeUpstream(max_line=100)
        message = b"x" * 100_000 + b"\r\n.." + b"y" * 300 + b"\r\n"
        async with session(up) as c:
            replies = await c.send_message("s@x", ["r@x"], message)
        assert replies[-1].code == 250
        assert up.transactions[0].data == b"x" * 100_000 + b"\r\n..." + b"y" * 300 + b"\r\n"
        assert up.transactions[0].message == message


async def test_size_limit() -> None:
    with trio.fail_after(10):
        up = FakeUpstream(size_limit=100)
        async with session(up) as c:
            await c.greeting()
            ehlo = await c.command("EHLO c")
            declared = await c.command("MAIL FROM:<s@x> SIZE=101")
            replies = await c.send_message("s@x", ["r@x"], b"x" * 200 + b"\r\n")
            small = await c.send_message("s@x", ["r@x"], b"small\r\n")
        assert "SIZE 100" in ehlo.lines and declared.code == 552
        assert replies[-1].code == 552 and small[-1].code == 250
        assert [t.message for t in up.transactions] == [b"small\r\n"]


async def test_delays_use_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1000):
        up = FakeUpstream(delay=1, delays={BANNER: 0, "RCPT": 30})
        async with in_memory(up) as c:
            start = trio.current_time()
            await c.greeting()
            assert trio.current_time() == start
            await c.command("MAIL FROM:<s@x>")
            assert trio.current_time() == start + 1
            with pytest.raises(trio.TooSlowError):
                await c.command("RCPT TO:<r@x>", timeout=29)
            assert (await c.read_reply(timeout=2)).code == 250
            assert trio.current_time() == start + 31


async def test_pipelined_send_arrives_in_one_piece() -> None:
    data_already_there: list[bool] = []

    def mail(line: bytes, s: Session) -> None:
        data_already_there.append(s.received.endswith(b"DATA\r\n"))

    with trio.fail_after(10):
        up = FakeUpstream(replies={"MAIL": mail})
        async with session(up) as c:
            await c.greeting()
            await c.command("EHLO c")
            replies = await c.send_message("s@x", ["r@x", "reject@x"], MESSAGE, pipelined=True)
            unpipelined = await c.send_message("s@x", ["r@x"], MESSAGE)
        assert [r.code for r in replies] == [250, 250, 550, 354, 250]
        assert [r.code for r in unpipelined] == [250, 250, 354, 250]
        assert data_already_there == [True, False]
        assert len(up.transactions) == 2


async def test_wait_until_and_counters() -> None:
    with trio.fail_after(10):
        up = FakeUpstream()
        async with up:
            async with open_client("127.0.0.1", up.port) as a, open_client("127.0.0.1", up.port):
                await up.wait_until(lambda: up.active_connections == 2)
                await a.send_message("s@x", ["r@x"], MESSAGE)
            await up.wait_until(lambda: up.active_connections == 0)
        assert up.connections == 2 and len(up.transactions) == 1
        assert up.transactions[0].session == 0
        assert up.transactions[0].peer == "127.0.0.1"
        assert [s.peer for s in up.sessions] == ["127.0.0.1", "127.0.0.1"]


async def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "up.sock"
    with trio.fail_after(10):
        up = FakeUpstream(unix_path=path)
        async with up, open_client(up.address) as c:
            assert up.address == str(path)
            replies = await c.send_message("s@x", ["r@x"], MESSAGE)
        assert replies[-1].code == 250
        assert up.transactions[0].peer == ""  # a Unix socket has no address to show
        assert not path.exists()


async def test_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with trio.fail_after(10):
        up = FakeUpstream(host="::1")
        async with up, open_client("::1", up.port) as c:
            assert up.address == f"[::1]:{up.port}"
            assert (await c.greeting()).code == 220
        assert up.sessions[0].peer == "::1"


async def test_body_exception_is_not_wrapped() -> None:
    with trio.fail_after(10), pytest.raises(KeyError):
        async with FakeUpstream():
            raise KeyError("from the body")


async def test_on_transaction_hook() -> None:
    got: list[bytes] = []
    with trio.fail_after(10):
        async with session(FakeUpstream(on_transaction=lambda t: got.append(t.message))) as c:
            await c.send_message("s@x", ["r@x"], MESSAGE)
    assert got == [MESSAGE]


async def test_bind_failure_raises_from_enter() -> None:
    with trio.fail_after(10), socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            async with FakeUpstream(port=taken.getsockname()[1]):
                pytest.fail("must not start")


async def test_single_line_ehlo_when_no_keywords() -> None:
    with trio.fail_after(10):
        async with session(FakeUpstream(hostname="up", ehlo_keywords=())) as c:
            await c.greeting()
            await c.command("EHLO c")
            assert c.received.endswith(b"ESMTP\r\n250 up\r\n")


async def test_record_false_keeps_nothing_but_still_reports() -> None:
    seen: list[bytes] = []
    up = FakeUpstream(record=False, on_transaction=lambda t: seen.append(t.message))
    with trio.fail_after(10):
        async with up:
            for _ in range(3):
                async with open_client("127.0.0.1", up.port) as client:
                    replies = await client.send_message("a@x", ["b@x"], b"Subject: s\r\n\r\nx\r\n")
                    assert replies[-1].code == 250
                    await client.quit()
            await up.wait_until(lambda: up.active_connections == 0)
            # A long-running sink: nothing piles up, yet it still counts and reports.
            assert (up.received, up.commands, up.transactions, up.sessions) == (b"", [], [], [])
            assert up.connections == 3
    assert seen == [b"Subject: s\r\n\r\nx\r\n"] * 3


async def test_a_closed_session_is_never_seen_still_listed_when_not_recording() -> None:
    """Regression: ``closed`` was set before the stream's close (a checkpoint), so a
    waiter on ``active_connections == 0`` could still find the session in ``sessions``."""
    up = FakeUpstream(record=False)
    seen: list[tuple[int, int]] = []
    done = trio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append((up.active_connections, len(up.sessions)))
            await trio.sleep(0)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            async with in_memory(up) as client:
                await client.greeting()
                await client.quit()
                await up.wait_until(lambda: up.connections == 1 and up.active_connections == 0)
            done.set()
    assert (0, 1) not in seen  # closed yet still listed: the state the race exposed
    assert (1, 1) in seen and seen[-1] == (0, 0)
