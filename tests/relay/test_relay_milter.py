"""The relay with milters (FakeMilter): every stage's decision, every end-of-message edit,
the changed envelope replayed upstream, FilterCommand before the milters, and a milter that
stalls or cannot be reached under each MilterDefaultAction (autojump clock)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from memory_relay import MemoryProxy, memory_proxied

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.protocol.milter.messages import (
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    InsertHeader,
    Quarantine,
    ReplaceBody,
)
from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.fake_milter import (
    ACCEPT,
    CONTINUE,
    DISCARD,
    HANGUP,
    REJECT,
    STALL,
    TEMPFAIL,
    FakeMilter,
    reject,
)

MESSAGE = b"From: s@x\r\nSubject: t\r\n\r\nbody\r\n"


@pytest.fixture(autouse=True)
def _info_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = (r.getMessage().partition(": ")[2] for r in caplog.records)
    return [line for line in lines if line.startswith("client=")]


@asynccontextmanager
async def milter_proxy(
    *milters: FakeMilter, config: str = "", up: FakeUpstream | None = None
) -> AsyncIterator[tuple[FakeUpstream, MemoryProxy, list[str]]]:
    addresses: list[str] = []
    async with trio.open_nursery() as nursery:
        for milter in milters:
            addresses.append(await nursery.start(_serve, milter))
        text = f"Milters: {', '.join(addresses)}\n{config}"
        async with memory_proxied(text, up) as (upstream, proxy):
            yield upstream, proxy, addresses
        nursery.cancel_scope.cancel()


async def _serve(milter: FakeMilter, task_status: trio.TaskStatus[str]) -> None:
    async with milter.serving() as address:
        task_status.started(address)
        await trio.sleep_forever()


async def codes(proxy: MemoryProxy, rcpts: tuple[str, ...] = ("r@x",)) -> list[int]:
    """One message from a client with a patient clock (the milter timeouts are shorter)."""
    async with proxy.connect(timeout=50) as client:
        replies = await client.send_message("s@x", rcpts, MESSAGE, helo="c")
        await client.command("QUIT")
    return [r.code for r in replies]


async def closed(milter: FakeMilter) -> None:
    with trio.fail_after(5):
        while not all(s.closed for s in milter.sessions):
            await trio.sleep(0.01)


# -- the stages -------------------------------------------------------------------------


async def test_every_stage_reaches_the_milter_and_the_message_is_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    milter = FakeMilter()
    async with milter_proxy(milter) as (up, proxy, [_address]):
        assert await codes(proxy) == [250, 250, 354, 250]
        await closed(milter)
    [t] = up.transactions
    assert (t.mail_from, t.rcpt_to, t.message) == ("s@x", ["r@x"], MESSAGE)
    session = milter.sessions[0]
    assert session.stages() == [
        "connect", "helo", "mail", "rcpt", "data", "header", "header", "eoh", "body", "eom",
        "quit",
    ]  # fmt: skip
    assert session.of("mail")[0].args == ("<s@x>",)
    assert session.of("rcpt")[0].args == ("<r@x>",)
    assert session.of("helo")[0].args == ("c",)
    assert session.headers == [("From", "s@x"), ("Subject", "t")]
    assert session.body == b"body\r\n"
    assert session.macros["{mail_addr}"] == "s@x"
    assert session.macros["{rcpt_addr}"] == "r@x"
    assert session.macros["{client_addr}"] == "127.0.0.1"
    assert session.macros["i"]
    [summary] = summaries(caplog)
    assert "status=FILTERED" in summary and "milter=" not in summary


@pytest.mark.parametrize("stage", ["helo", "mail", "rcpt", "data"])
@pytest.mark.parametrize(
    ("answer", "reply"),
    [
        (REJECT, "550 5.7.1 Command rejected"),
        (TEMPFAIL, "451 4.7.1 Service unavailable - try again later"),
        (reject("553 5.7.1 not from you"), "553 5.7.1 not from you"),
    ],
)
async def test_a_refusal_at_a_command_is_the_clients_answer_before_the_upstream_sees_it(
    stage: str, answer: object, reply: str, caplog: pytest.LogCaptureFixture
) -> None:
    milter = FakeMilter({stage: answer})  # type: ignore[dict-item]
    async with milter_proxy(milter) as (up, proxy, [address]), proxy.connect() as client:
        await client.greeting()
        replies = [await client.command("EHLO c")]
        for line in ("MAIL FROM:<s@x>", "RCPT TO:<r@x>", "DATA"):
            if replies[-1].code >= 400:
                break
            replies.append(await client.command(line))
        assert replies[-1].to_bytes() == reply.encode() + b"\r\n"
        await client.command("QUIT")
    verb = {"helo": b"EHLO", "mail": b"MAIL", "rcpt": b"RCPT", "data": b"RSET"}[stage]
    if stage == "data":  # the upstream's transaction is reset, and the message summarised
        assert up.commands[-2:] == [b"RSET", b"QUIT"]
        [summary] = summaries(caplog)
        status = "DEFERRED" if reply.startswith("4") else "REJECTED"
        assert f"status={status}, milter={address}, reason={reply}" in summary
    else:
        assert not any(c.startswith(verb) for c in up.commands)
    assert b"DATA" not in up.commands and not up.transactions


async def test_a_refused_recipient_is_only_that_one() -> None:
    milter = FakeMilter({"rcpt": lambda cmd: REJECT if "bad@" in cmd.args[0] else None})
    async with milter_proxy(milter) as (up, proxy, _):
        assert await codes(proxy, ("bad@x", "good@x")) == [250, 550, 250, 354, 250]
    [t] = up.transactions
    assert t.rcpt_to == ["good@x"]
    assert b"RCPT TO:<bad@x>" not in up.commands


async def test_a_refusal_at_connect_answers_every_command() -> None:
    milter = FakeMilter({"connect": reject("554 5.7.1 go away")})
    async with milter_proxy(milter) as (up, proxy, _), proxy.connect() as client:
        assert (await client.greeting()).code == 220
        assert (await client.command("EHLO c")).to_bytes() == b"554 5.7.1 go away\r\n"
        assert (await client.command("MAIL FROM:<s@x>")).code == 554
        assert (await client.command("QUIT")).code == 221
    assert up.commands == [b"QUIT"]


async def test_accept_at_mail_skips_the_milter_for_that_message_only() -> None:
    milter = FakeMilter({"mail": ACCEPT})
    async with milter_proxy(milter) as (up, proxy, _):
        assert await codes(proxy) == [250, 250, 354, 250]
        await closed(milter)
    # nothing after MAIL but the end of the transaction (abort) and QUIT
    assert milter.sessions[0].stages() == ["connect", "helo", "mail", "abort", "quit"]
    assert len(up.transactions) == 1


@pytest.mark.parametrize("stage", ["mail", "rcpt", "eom"])
async def test_discard_tells_the_client_250_and_delivers_nothing(
    stage: str, caplog: pytest.LogCaptureFixture
) -> None:
    milter = FakeMilter({stage: DISCARD})
    async with milter_proxy(milter) as (up, proxy, [address]):
        assert await codes(proxy) == [250, 250, 354, 250]
    assert not up.transactions and b"DATA" not in up.commands
    assert up.commands[-2:] == [b"RSET", b"QUIT"]
    [summary] = summaries(caplog)
    assert "status=DROPPED" in summary
    if stage == "eom":
        assert f"milter={address}" in summary


async def test_a_refusal_at_end_of_message_resets_the_upstream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    milter = FakeMilter({"eom": reject("550 5.7.1 looks like spam")})
    async with milter_proxy(milter) as (up, proxy, [address]):
        assert await codes(proxy) == [250, 250, 354, 550]
    assert not up.transactions and b"DATA" not in up.commands
    [summary] = summaries(caplog)
    assert f"status=REJECTED, milter={address}, reason=550 5.7.1 looks like spam" in summary


async def test_rset_aborts_the_milters_transaction() -> None:
    milter = FakeMilter()
    async with milter_proxy(milter) as (_up, proxy, _):
        async with proxy.connect() as client:
            await client.greeting()
            await client.command("EHLO c")
            await client.command("MAIL FROM:<s@x>")
            assert (await client.command("RSET")).code == 250
            await client.command("QUIT")
        await closed(milter)
    assert milter.sessions[0].stages() == ["connect", "helo", "mail", "abort", "quit"]


async def test_an_upstream_refusal_of_mail_aborts_the_milters_transaction() -> None:
    milter = FakeMilter()
    async with milter_proxy(milter) as (_up, proxy, _):
        async with proxy.connect() as client:
            await client.greeting()
            await client.command("EHLO c")
            assert (await client.command("MAIL FROM:<reject@x>")).code == 550
            await client.command("QUIT")
        await closed(milter)
    assert milter.sessions[0].stages() == ["connect", "helo", "mail", "abort", "quit"]


async def test_a_client_leaving_mid_transaction_closes_the_milter_session() -> None:
    milter = FakeMilter()
    async with milter_proxy(milter) as (up, proxy, _):
        async with proxy.connect() as client:
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            await client.send(b"Subject: t\r\n")
        await closed(milter)
    assert milter.sessions[0].stages()[-1] == "data"  # closed, never told end of message
    assert not up.transactions


# -- end-of-message edits ---------------------------------------------------------------


async def test_header_and_body_edits_reach_the_upstream() -> None:
    edits = [
        AddHeader("X-Added", "yes"),
        InsertHeader(0, "X-First", "1"),
        ChangeHeader(1, "Subject", "changed"),
        ChangeHeader(1, "From", ""),
        ReplaceBody(b"new body\r\n.dot line\r\n"),
        CONTINUE,
    ]
    milter = FakeMilter({"eom": edits})
    async with milter_proxy(milter) as (up, proxy, _):
        assert await codes(proxy) == [250, 250, 354, 250]
    [t] = up.transactions
    head = b"X-First: 1\r\nSubject: changed\r\nX-Added: yes\r\n"
    assert t.message == head + b"\r\nnew body\r\n.dot line\r\n"
    assert b"\r\n..dot line\r\n" in t.data  # stuffed on the wire


async def test_quarantine_is_a_header_on_the_delivered_message() -> None:
    milter = FakeMilter({"eom": [Quarantine("virus found"), CONTINUE]})
    async with milter_proxy(milter) as (up, proxy, _):
        assert await codes(proxy) == [250, 250, 354, 250]
    [t] = up.transactions
    quarantined = b"\r\nX-Quarantine-Reason: virus found\r\n\r\n"
    assert t.message == MESSAGE.replace(b"\r\n\r\n", quarantined)


async def test_a_changed_envelope_is_replayed_upstream_before_data(
    caplog: pytest.LogCaptureFixture,
) -> None:
    edits = [
        ChangeSender("<new@x>", "BODY=8BITMIME"),
        AddRecipient("<added@x>"),
        DeleteRecipient("<r2@x>"),
        AddRecipient("<reject-me@x>"),  # the upstream refuses this one: logged, not fatal
        CONTINUE,
    ]
    milter = FakeMilter({"eom": edits})
    async with milter_proxy(milter) as (up, proxy, _):
        assert await codes(proxy, ("r@x", "r2@x")) == [250, 250, 250, 354, 250]
    [t] = up.transactions
    assert (t.mail_from, t.rcpt_to, t.message) == ("new@x", ["r@x", "added@x"], MESSAGE)
    data = up.commands.index(b"DATA")
    assert up.commands[data - 5 : data] == [
        b"RSET",
        b"MAIL FROM:<new@x> BODY=8BITMIME",
        b"RCPT TO:<r@x>",
        b"RCPT TO:<added@x>",
        b"RCPT TO:<reject-me@x>",
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert any("next server refused recipient reject-me@x" in m for m in messages)
    [summary] = summaries(caplog)
    assert "from=<new@x>, to=<r@x>, to=<added@x>, status=FILTERED" in summary


async def test_every_recipient_removed_is_a_discard(caplog: pytest.LogCaptureFixture) -> None:
    milter = FakeMilter({"eom": [DeleteRecipient("<r@x>"), CONTINUE]})
    async with milter_proxy(milter) as (up, proxy, _):
        assert await codes(proxy) == [250, 250, 354, 250]
    assert not up.transactions
    [summary] = summaries(caplog)
    assert "status=DROPPED" in summary


async def test_a_changed_sender_refused_upstream_is_the_clients_answer() -> None:
    milter = FakeMilter({"eom": [ChangeSender("<reject@x>"), CONTINUE]})
    async with milter_proxy(milter) as (up, proxy, _):
        assert await codes(proxy) == [250, 250, 354, 550]
    assert not up.transactions and b"DATA" not in up.commands


# -- milters and FilterCommand ----------------------------------------------------------


async def test_filter_command_runs_first_and_the_milters_see_its_output(
    caplog: pytest.LogCaptureFixture,
) -> None:
    milter = FakeMilter({"eom": [AddHeader("X-Milter", "1"), CONTINUE]})
    config = "FilterCommand: sed s/body/filtered/"
    async with milter_proxy(milter, config=config) as (up, proxy, _):
        assert await codes(proxy) == [250, 250, 354, 250]
        await closed(milter)
    assert milter.sessions[0].body == b"filtered\r\n"
    [t] = up.transactions
    assert t.message == b"From: s@x\r\nSubject: t\r\nX-Milter: 1\r\n\r\nfiltered\r\n"


async def test_a_filter_refusal_is_said_to_come_from_the_filter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    milter = FakeMilter()
    config = "FilterCommand: sh -c 'echo 554 no >&2; exit 1'"
    async with milter_proxy(milter, config=config) as (_up, proxy, _):
        assert await codes(proxy) == [250, 250, 354, 554]
        await closed(milter)
    assert "eom" not in milter.sessions[0].stages()
    assert "abort" in milter.sessions[0].stages()
    [summary] = summaries(caplog)
    assert "filter=sh" in summary and "milter=" not in summary


# -- failures: MilterDefaultAction ------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "expected"), [("tempfail", 451), ("reject", 554), ("accept", 250)]
)
@pytest.mark.parametrize("stage", ["connect", "mail", "rcpt", "eom"])
async def test_a_stalled_milter_hits_its_timeout_and_the_default_action_applies(
    stage: str, action: str, expected: int, autojump_clock: trio.testing.MockClock
) -> None:
    milter = FakeMilter({stage: STALL})
    config = (
        f"MilterDefaultAction: {action}\nMilterCommandTimeout: 7\nMilterContentTimeout: 11\n"
        "TimeOut: 100"
    )
    with trio.fail_after(60):
        async with milter_proxy(milter, config=config) as (up, proxy, _):
            start = trio.current_time()
            got = await codes(proxy)
    elapsed = trio.current_time() - start
    assert elapsed == pytest.approx(11 if stage == "eom" else 7, abs=0.5)
    if expected == 250:
        assert got == [250, 250, 354, 250] and len(up.transactions) == 1
    else:
        assert expected in got and not up.transactions


@pytest.mark.parametrize(
    ("action", "expected"), [("tempfail", 451), ("reject", 554), ("accept", 250)]
)
async def test_an_unreachable_milter_gets_the_default_action(
    action: str, expected: int, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.socket.socket() as sock:  # bound, never listening: connections are refused
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = f"Milters: inet:127.0.0.1:{port}\nMilterDefaultAction: {action}"
        with trio.fail_after(60):
            async with memory_proxied(config) as (up, proxy):
                got = await codes(proxy)
    if expected == 250:
        assert got == [250, 250, 354, 250] and len(up.transactions) == 1
    else:
        assert got == [expected] and not up.transactions  # refused at EHLO already


async def test_a_milter_hanging_up_mid_session_gets_the_default_action() -> None:
    milter = FakeMilter({"rcpt": HANGUP})
    async with milter_proxy(milter, config="MilterDefaultAction: tempfail") as (up, proxy, _):
        assert await codes(proxy) == [250, 451]
    assert not up.transactions


async def test_skip_authenticated_skips_the_filter_but_not_the_milters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    milter = FakeMilter({"eom": [AddHeader("X-Signed", "yes"), CONTINUE]})
    config = "Skip: authenticated\nFilterCommand: sed s/body/FILTERED/"
    async with (
        milter_proxy(milter, config=config) as (up, proxy, _),
        proxy.connect(timeout=50) as client,
    ):
        await client.greeting()
        await client.command("EHLO c")
        assert (await client.command("AUTH PLAIN AGFAYg==")).code == 235
        replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c")
        assert [r.code for r in replies] == [250, 250, 354, 250]
        await client.command("QUIT")
    [t] = up.transactions
    assert t.message == MESSAGE.replace(b"\r\n\r\n", b"\r\nX-Signed: yes\r\n\r\n")
    [summary] = summaries(caplog)
    assert "status=SKIPPED" in summary


async def test_a_bdat_message_goes_through_the_milters_too() -> None:
    milter = FakeMilter({"eom": [AddHeader("X-Signed", "yes"), CONTINUE]})
    async with (
        milter_proxy(milter, config="Chunking: on") as (up, proxy, _),
        proxy.connect(timeout=50) as client,
    ):
        replies = await client.send_message_bdat("s@x", ["r@x"], MESSAGE, chunk_size=10)
        assert replies[-1].code == 250
        await client.command("QUIT")
    [t] = up.transactions
    assert t.message == MESSAGE.replace(b"\r\n\r\n", b"\r\nX-Signed: yes\r\n\r\n")
    assert milter.sessions[0].body == b"body\r\n"
