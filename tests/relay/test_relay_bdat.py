"""CHUNKING from clients (Chunking: on): BDAT chunks spooled, filtered whole, sent upstream
as BDAT when the next server offers CHUNKING, else as dot-stuffed DATA."""

from __future__ import annotations

from memory_relay import memory_proxied

from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.client import FakeClient

CHUNKING = "Chunking: on\n"
MESSAGE = b"Subject: chunks\r\n\r\n.a line with a dot\r\nand 8 bits: \xc3\xa9\xff\r\nlast line\r\n"
NO_CHUNKING = ["PIPELINING", "SIZE 10240000", "8BITMIME"]


async def test_chunking_is_advertised_and_binarymime_never() -> None:
    async with memory_proxied(CHUNKING) as (_, proxy), proxy.connect() as client:
        ehlo = await client.command("EHLO client.example")
    assert "CHUNKING" in ehlo.lines and "BINARYMIME" not in ehlo.lines


async def test_chunking_off_keeps_the_refusal() -> None:
    async with memory_proxied() as (up, proxy), proxy.connect() as client:
        ehlo = await client.command("EHLO client.example")
        assert "CHUNKING" not in ehlo.lines
        await client.command("MAIL FROM:<s@x>")
        await client.command("RCPT TO:<r@x>")
        [reply] = await client.send_bdat([b"QUIT\r\n"])
        assert reply.code == 502
    assert b"BDAT" not in b"".join(up.commands)


async def test_bdat_chunks_are_filtered_whole_and_relayed_as_bdat() -> None:
    # The filter sees the whole message: its last line is in the last chunk only.
    config = CHUNKING + "FilterType: file\nFilterCommand: grep -q 'last line' \"$EMAIL\"\n"
    async with memory_proxied(config) as (up, proxy), proxy.connect() as client:
        replies = await client.send_message_bdat("s@x", ["r@x"], MESSAGE, chunk_size=10)
        codes = [r.code for r in replies]
        assert codes == [250, 250] + [250] * ((len(MESSAGE) + 9) // 10)
        assert replies[2].text.endswith("10 octets received")
        assert proxy.leftovers() == []
    [transaction] = up.transactions
    assert transaction.message == MESSAGE  # byte for byte, 8-bit included
    assert transaction.chunks == [len(MESSAGE)]  # one LAST chunk upstream
    assert b"DATA" not in up.commands


async def test_bdat_to_an_upstream_without_chunking_goes_as_stuffed_data() -> None:
    up = FakeUpstream(ehlo_keywords=NO_CHUNKING)
    async with memory_proxied(CHUNKING, up) as (_, proxy), proxy.connect() as client:
        ehlo = await client.command("EHLO client.example")
        assert "CHUNKING" in ehlo.lines  # ours
        replies = await client.send_message_bdat("s@x", ["r@x"], MESSAGE, chunk_size=7)
        assert all(r.code == 250 for r in replies)
    [transaction] = up.transactions
    assert transaction.chunks is None and transaction.message == MESSAGE
    assert b"\r\n..a line with a dot\r\n" in transaction.data


async def test_pipelined_bdat_message() -> None:
    config = CHUNKING + "Pipelining: on\n"
    async with memory_proxied(config) as (up, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        replies = await client.send_message_bdat(
            "s@x", ["r1@x", "r2@x"], MESSAGE, chunk_size=16, pipelined=True
        )
        assert all(r.code == 250 for r in replies)
        assert (await client.send_message("s@x", ["r@x"], b"after\r\n"))[-1].code == 250
    assert up.transactions[0].message == MESSAGE
    assert up.transactions[0].rcpt_to == ["r1@x", "r2@x"]
    assert up.transactions[1].message == b"after\r\n"


async def test_bdat_over_the_size_limit_is_552_at_last() -> None:
    config = CHUNKING + "MaxMessageSize: 20\n"
    async with memory_proxied(config) as (up, proxy), proxy.connect() as client:
        replies = await client.send_message_bdat("s@x", ["r@x"], b"x" * 50, chunk_size=15)
        assert [r.code for r in replies] == [250, 250, 250, 250, 250, 552]
        assert (await client.command("NOOP")).code == 250  # still in step
        assert proxy.leftovers() == []
    assert up.transactions == [] and b"RSET" in up.commands


async def test_bdat_without_a_transaction_is_refused_and_its_chunk_skipped() -> None:
    async with memory_proxied(CHUNKING) as (up, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        [reply] = await client.send_bdat([b"QUIT\r\n"])
        assert reply.code == 503
        await client.command("MAIL FROM:<s@x>")
        await client.command("RCPT TO:<reject@x>")
        [reply] = await client.send_bdat([b"RSET\r\n"])
        assert reply.code == 554
        assert (await client.command("NOOP")).code == 250
    assert b"QUIT" not in up.commands and b"RSET" not in up.commands


async def chunk(client: FakeClient, frame: bytes) -> Reply:
    await client.send(frame)
    return await client.read_reply()


async def test_commands_between_chunks() -> None:
    async with memory_proxied(CHUNKING) as (up, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        await client.command("MAIL FROM:<s@x>")
        await client.command("RCPT TO:<r@x>")
        assert (await chunk(client, b"BDAT 5\r\nfirst")).code == 250
        assert (await client.command("NOOP")).code == 250
        assert (await client.command("DATA")).code == 503
        assert (await client.command("MAIL FROM:<t@x>")).code == 503
        assert (await chunk(client, b"BDAT 7 LAST\r\n second")).code == 250
        # RSET abandons a message in the middle: nothing goes upstream, no file is left.
        assert (await client.command("MAIL FROM:<s@x>")).code == 250
        assert (await client.command("RCPT TO:<r@x>")).code == 250
        assert (await chunk(client, b"BDAT 3\r\nabc")).code == 250
        assert (await client.command("RSET")).code == 250
        assert proxy.leftovers() == []
        assert (await client.send_message("s@x", ["r@x"], b"by data\r\n"))[-1].code == 250
    assert [t.message for t in up.transactions] == [b"first second", b"by data\r\n"]


async def test_bdat_syntax_error_closes_the_connection() -> None:
    async with memory_proxied(CHUNKING) as (up, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        await client.command("MAIL FROM:<s@x>")
        await client.command("RCPT TO:<r@x>")
        reply = await client.command("BDAT lots")
        assert reply.code == 501
        assert await client.read_eof() == b""
    assert up.transactions == []


async def test_zero_size_last_chunk() -> None:
    async with memory_proxied(CHUNKING) as (up, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        await client.command("MAIL FROM:<s@x>")
        await client.command("RCPT TO:<r@x>")
        assert (await chunk(client, b"BDAT 4\r\nab\r\n")).code == 250
        assert (await chunk(client, b"BDAT 0 LAST\r\n")).code == 250
    assert up.transactions[0].message == b"ab\r\n"
