"""PIPELINING towards the next server (RFC 2920): the client's buffered MAIL/RCPT group goes
upstream in one write, replies come back in order, each to its own command (B1)."""

from __future__ import annotations

import itertools

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from memory_relay import memory_proxied

from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.upstream import Session as UpSession

MESSAGE = b"Subject: piped\r\n\r\npipelined upstream\r\n"
PIPELINING = "Pipelining: on\n"


def rcpts_seen_at_mail(seen: list[int]):  # type: ignore[no-untyped-def]
    """A MAIL responder noting how many RCPTs had arrived when MAIL was answered."""

    def respond(line: bytes, session: UpSession) -> None:
        seen.append(bytes(session.received).count(b"RCPT TO:"))
        return None

    return respond


async def test_a_pipelined_group_goes_upstream_in_one_write() -> None:
    seen: list[int] = []
    up = FakeUpstream(replies={"MAIL": rcpts_seen_at_mail(seen)})
    async with memory_proxied(PIPELINING, up) as (_, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        replies = await client.send_message("s@x", ["r1@x", "r2@x"], MESSAGE, pipelined=True)
        assert [r.code for r in replies] == [250, 250, 250, 354, 250]
    session = up.sessions[0]
    assert [b"MAIL FROM:<s@x>", b"RCPT TO:<r1@x>", b"RCPT TO:<r2@x>"] in session.reply_groups
    assert seen == [2]  # both RCPTs were there before MAIL was answered
    [transaction] = up.transactions
    assert transaction.rcpt_to == ["r1@x", "r2@x"] and transaction.message == MESSAGE


async def test_a_lone_command_waits_for_its_reply() -> None:
    seen: list[int] = []
    up = FakeUpstream(replies={"MAIL": rcpts_seen_at_mail(seen)})
    async with memory_proxied(PIPELINING, up) as (_, proxy), proxy.connect() as client:
        replies = await client.send_message("s@x", ["r1@x", "r2@x"], MESSAGE)  # lock-step
        assert replies[-1].code == 250
    assert seen == [0]
    assert all(len(group) == 1 for group in up.sessions[0].reply_groups)


async def test_no_group_when_the_upstream_does_not_offer_pipelining() -> None:
    seen: list[int] = []
    up = FakeUpstream(
        ehlo_keywords=["SIZE 1000000", "8BITMIME"], replies={"MAIL": rcpts_seen_at_mail(seen)}
    )
    async with memory_proxied(PIPELINING, up) as (_, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        replies = await client.send_message("s@x", ["r1@x", "r2@x"], MESSAGE, pipelined=True)
        assert [r.code for r in replies] == [250, 250, 250, 354, 250]
    assert seen == [0]


async def test_a_group_whose_recipients_all_fail_gets_no_354() -> None:
    async with memory_proxied(PIPELINING) as (up, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        replies = await client.start_message("s@x", ["reject1@x", "reject2@x"], pipelined=True)
        assert [r.code for r in replies] == [250, 550, 550, 554]
        assert (await client.command("QUIT")).code == 221
    session = up.sessions[0]
    assert [b"MAIL FROM:<s@x>", b"RCPT TO:<reject1@x>", b"RCPT TO:<reject2@x>"] in (
        session.reply_groups
    )
    assert b"DATA" not in session.commands and up.transactions == []


async def test_replies_of_a_group_are_each_paired_with_their_command() -> None:
    # MAIL refused: the RCPTs of the group get the upstream's own replies, in order (B1).
    async with memory_proxied(PIPELINING) as (up, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        replies = await client.pipeline(
            ["MAIL FROM:<reject@x>", "RCPT TO:<a@x>", "RCPT TO:<b@x>", "NOOP"]
        )
        assert [r.code for r in replies] == [550, 503, 503, 250]
        # The session's envelope is right after the group: a new transaction works.
        again = await client.send_message("s@x", ["r@x"], MESSAGE, pipelined=True)
        assert [r.code for r in again] == [250, 250, 354, 250]
    assert up.transactions[0].rcpt_to == ["r@x"]


async def test_pipelined_group_under_the_timeout(autojump_clock: trio.testing.MockClock) -> None:
    # The group's replies are read under TimeOut like any other.
    up = FakeUpstream(delays={"RCPT": 1000})
    config = PIPELINING + "TimeOut: 30\n"
    async with memory_proxied(config, up) as (_, proxy), proxy.connect(timeout=1000) as client:
        await client.command("EHLO client.example")
        start = trio.current_time()
        await client.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<r@x>\r\n")
        # The fake holds MAIL's reply for the group, whose RCPT reply never comes.
        reply = await client.read_reply()
        assert reply.code == 421 and "timed out" in reply.text
        assert 30 <= trio.current_time() - start < 31
        assert await client.read_eof() == b""


WIRE = b"MAIL FROM:<s@x>\r\nRCPT TO:<r1@x>\r\nRCPT TO:<reject@x>\r\nRCPT TO:<r2@x>\r\nDATA\r\n"


async def _split_session(cuts: list[int]) -> tuple[list[int], list[list[str]]]:
    points = sorted({min(c, len(WIRE)) for c in cuts} | {0, len(WIRE)})
    async with memory_proxied(PIPELINING) as (up, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        for a, b in itertools.pairwise(points):
            await client.send(WIRE[a:b])
            await trio.sleep(0)  # let the proxy read what is there so far
        codes = [(await client.read_reply()).code for _ in range(5)]
        if codes[-1] == 354:
            await client.send(MESSAGE + b".\r\n")
            codes.append((await client.read_reply()).code)
    return codes, [t.rcpt_to for t in up.transactions]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=5))
def test_any_split_of_a_pipelined_group_gets_the_same_replies(cuts: list[int]) -> None:
    codes, recipients = trio.run(_split_session, cuts)
    assert codes == [250, 250, 550, 250, 354, 250]
    assert recipients == [["r1@x", "r2@x"]]
