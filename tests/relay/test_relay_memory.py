"""The relay on memory streams under the autojump clock: timeouts, keepalives and a client
leaving, with no socket (a Connection works on any trio.abc.Stream)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from memory_relay import memory_proxied as proxied

from trio_proxsmtp.testing import END_OF_DATA, FakeUpstream

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


async def test_t38_idle_client_gets_421_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with proxied("TimeOut: 5") as (up, proxy), proxy.connect(timeout=60) as client:
            await client.command("EHLO c")
            start = trio.current_time()
            reply = await client.read_reply()
            assert reply.to_bytes() == b"421 4.4.2 smtp.passthru Error: timeout exceeded\r\n"
            assert 5 <= trio.current_time() - start < 6
            await client.read_eof()
            await up.wait_until(lambda: up.active_connections == 0)


async def test_t39_keepalives_while_data_arrives_slowly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with (
            proxied("KeepAlives: 1\nTimeOut: 5\nMinDataRate: 0") as (up, proxy),
            proxy.connect(timeout=60) as client,
        ):
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            for line in (b"Subject: t\r\n", b"\r\n", b"a\r\n", b"b\r\n"):
                await client.send(line)
                await trio.sleep(1.5)
            await client.send(b".\r\n")
            final = await client.read_reply()
            assert final.code == 250
            # No NOOP reply reached the client: the next reply is NOOP's own.
            assert (await client.command("QUIT")).code == 221
            assert len(client.replies) == 7
            noops = up.commands.index(b"DATA") - up.commands.index(b"RCPT TO:<r@x>") - 1
            assert noops >= 2
            assert set(up.commands[3 : 3 + noops]) == {b"NOOP"}
            assert up.transactions[0].message == b"Subject: t\r\n\r\na\r\nb\r\n"


async def test_client_leaving_during_replay_of_a_bare_stream_gets_nothing_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # No socket to peek at: the client is watched while the message is replayed.
    with trio.fail_after(30):
        async with proxied("", FakeUpstream(delays={"DATA": 2.0})) as (up, proxy):
            async with proxy.connect() as client:
                assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
                await client.send(MESSAGE + b".\r\n")
            await up.wait_until(lambda: up.active_connections == 0)
            assert b"DATA" in up.commands
            assert up.transactions == []
            assert b"Subject: t" not in bytes(up.received)


async def test_pipelined_quit_then_close_on_a_bare_stream_delivers_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Its end of stream came before its reply: it is gone (issue 21, docs/behaviour.md §5).
    with trio.fail_after(30):
        async with proxied("", FakeUpstream(delays={"DATA": 2.0})) as (up, proxy):
            async with proxy.connect() as client:
                assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
                await client.send(MESSAGE + b".\r\nQUIT\r\n")
            await up.wait_until(lambda: up.active_connections == 0)
            assert up.transactions == []


async def test_summary_delays_are_the_relays_measured_stages(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """receive: the client's message; upstream: our DATA and the message up to its reply."""
    caplog.set_level(logging.INFO)
    up = FakeUpstream(delays={"DATA": 0.5, END_OF_DATA: 2.0})
    with trio.fail_after(60):
        async with proxied("", up) as (_, proxy), proxy.connect(timeout=60) as client:
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            await client.send(MESSAGE[:5])
            await trio.sleep(1.5)
            await client.send(MESSAGE[5:] + b".\r\n")
            assert (await client.read_reply()).code == 250
    [summary] = [r.getMessage() for r in caplog.records if "client=" in r.getMessage()]
    assert summary.endswith(
        f"status=PASSED, upstream=250 2.0.0 Ok: queued as 1, relay=upstream.memory, "
        f"size={len(MESSAGE)}, delay=4.00, delays=1.50/0.00/2.50"
    )


async def test_bdat_receive_delay_runs_from_the_first_chunk_to_the_last(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(60):
        async with proxied("Chunking: on") as (_, proxy), proxy.connect(timeout=60) as client:
            assert (await client.command("EHLO c")).code == 250
            assert (await client.command("MAIL FROM:<s@x>")).code == 250
            assert (await client.command("RCPT TO:<r@x>")).code == 250
            await client.send(b"BDAT 5\r\n" + MESSAGE[:5])
            assert (await client.read_reply()).code == 250
            await trio.sleep(2.0)  # the client takes its time between chunks
            rest = MESSAGE[5:]
            await client.send(f"BDAT {len(rest)} LAST\r\n".encode() + rest)
            assert (await client.read_reply()).code == 250
    [summary] = [r.getMessage() for r in caplog.records if "client=" in r.getMessage()]
    assert summary.endswith(f"size={len(MESSAGE)}, delay=2.00, delays=2.00/0.00/0.00")
