"""The Trio milter client against the scriptable fake milter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_proxsmtp.config.options import parse_milter_address, parse_milter_list
from trio_proxsmtp.protocol.message.edit import MilterEnvelope, Recipient
from trio_proxsmtp.protocol.milter.codec import MtaCommand
from trio_proxsmtp.protocol.milter.codes import Proto
from trio_proxsmtp.protocol.milter.messages import (
    AddHeader,
    AddRecipient,
    ChangeSender,
    InsertHeader,
    MilterVerdictKind,
    Progress,
    ReplaceBody,
)
from trio_proxsmtp.stages.milter.decisions import (
    FAILURE_REJECT_REPLY,
    FAILURE_TEMPFAIL_REPLY,
    MilterContext,
)
from trio_proxsmtp.stages.milter.milters import Milters
from trio_proxsmtp.stages.settings import DefaultAction, MilterSettings
from trio_proxsmtp.testing.fake_milter import (
    ACCEPT,
    CONTINUE,
    DISCARD,
    HANGUP,
    STALL,
    FakeMilter,
    Pause,
    reject,
)

MESSAGE = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
ENVELOPE = MilterEnvelope("a@example.com", (Recipient("b@example.org"),))
CONTEXT = MilterContext("192.0.2.7", 40123, "client.test", hostname="proxy.test")


def settings(*addresses: str, **kwargs: object) -> MilterSettings:
    return MilterSettings(
        milters=tuple(parse_milter_address(a) for a in addresses),
        **kwargs,  # type: ignore[arg-type]
    )


async def transaction(milters: Milters, rcpts: Sequence[str] = ("<b@example.org>",)) -> list[str]:
    """connect..data; returns the RCPT replies (or "ok")."""
    assert (await milters.connect(CONTEXT)).proceed
    assert (await milters.helo("client.test")).proceed
    assert (await milters.mail("<a@example.com>", ["SIZE=10"], queue_id="Q1")).proceed
    replies = []
    for rcpt in rcpts:
        decision = await milters.rcpt(rcpt)
        replies.append("ok" if decision.proceed else str(decision.reply))
    assert (await milters.data()).proceed
    return replies


async def test_every_stage_reaches_the_milter_with_its_macros() -> None:
    fake = FakeMilter()
    async with fake.serving() as address, Milters(settings(address)) as milters:
        await transaction(milters)
        result = await milters.message(lambda: [MESSAGE], ENVELOPE)
        assert result.decision.proceed and not result.modified
    session = fake.sessions[0]
    assert session.stages() == [
        "connect", "helo", "mail", "rcpt", "data", "header", "header", "eoh", "body", "eom",
        "quit",
    ]  # fmt: skip
    connect = session.of("connect")[0]
    assert (connect.args, connect.port, connect.family) == (
        ("client.test", "192.0.2.7"),
        40123,
        "4",
    )
    assert session.of("mail")[0].args == ("<a@example.com>", "SIZE=10")
    assert session.of("rcpt")[0].args == ("<b@example.org>",)
    assert session.headers == [("From", "a@example.com"), ("Subject", "hi")]
    assert session.body == b"body\r\n"
    for name, value in {
        "j": "proxy.test",
        "{client_addr}": "192.0.2.7",
        "{client_port}": "40123",
        "{client_name}": "client.test",
        "{mail_addr}": "a@example.com",
        "{rcpt_addr}": "b@example.org",
        "i": "Q1",
    }.items():
        assert session.macros[name] == value
    assert session.closed


async def test_a_client_on_a_unix_socket_is_family_l_with_port_0() -> None:
    fake = FakeMilter()
    context = MilterContext("/run/proxsmtpd.sock", 40123, "localhost", unix=True)
    async with fake.serving() as address, Milters(settings(address)) as milters:
        assert (await milters.connect(context)).proceed
    connect = fake.sessions[0].of("connect")[0]
    assert (connect.args, connect.port, connect.family) == (
        ("localhost", "/run/proxsmtpd.sock"),
        0,
        "L",
    )


async def test_rcpt_reject_is_per_recipient_with_the_milter_reply() -> None:
    def rcpt(command: MtaCommand) -> object:
        return reject("550 5.7.1 not you") if "bad@" in command.args[0] else None

    fake = FakeMilter({"rcpt": rcpt})  # type: ignore[dict-item]
    async with fake.serving() as address, Milters(settings(address)) as milters:
        replies = await transaction(milters, ["<bad@example.org>", "<good@example.org>"])
    assert replies == ["550 5.7.1 not you", "ok"]


async def test_mail_reject_and_tempfail_give_default_replies_and_abort() -> None:
    fake = FakeMilter({"mail": reject("451 4.7.0 later")})
    async with fake.serving() as address, Milters(settings(address)) as milters:
        await milters.connect(CONTEXT)
        decision = await milters.mail("<a@example.com>")
        assert (decision.kind, decision.reply, decision.milter) == (
            MilterVerdictKind.TEMPFAIL,
            "451 4.7.0 later",
            address,
        )
    assert fake.sessions[0].stages()[-2:] == ["abort", "quit"]


async def test_end_of_message_modifications_come_back_applied() -> None:
    fake = FakeMilter(
        {
            "eom": [
                InsertHeader(0, "X-First", "1"),
                AddHeader("X-Last", "2"),
                ReplaceBody(b"new body\r\n"),
                ChangeSender("<bounce@example.com>"),
                AddRecipient("<copy@example.org>"),
                CONTINUE,
            ]
        }
    )
    async with fake.serving() as address, Milters(settings(address)) as milters:
        await transaction(milters)
        result = await milters.message(lambda: [MESSAGE], ENVELOPE)
    assert result.decision.proceed and result.modified
    assert b"".join(result.message.chunks()) == (
        b"X-First: 1\r\nFrom: a@example.com\r\nSubject: hi\r\nX-Last: 2\r\n\r\nnew body\r\n"
    )
    assert result.envelope.sender == "bounce@example.com"
    assert [r.address for r in result.envelope.recipients] == ["b@example.org", "copy@example.org"]


async def test_milters_run_in_order_and_each_sees_the_edits_before_it() -> None:
    first = FakeMilter({"eom": [AddHeader("X-First", "yes"), CONTINUE]})
    second = FakeMilter({"eom": reject("550 5.7.1 second says no")})
    third = FakeMilter()
    async with (
        first.serving() as a1,
        second.serving() as a2,
        third.serving() as a3,
        Milters(settings(a1, a2, a3)) as milters,
    ):
        await transaction(milters)
        result = await milters.message(lambda: [MESSAGE], ENVELOPE)
    assert (result.decision.reply, result.decision.milter) == ("550 5.7.1 second says no", a2)
    assert ("X-First", "yes") in second.sessions[0].headers
    assert "eom" not in third.sessions[0].stages()
    assert third.sessions[0].stages()[-2:] == ["abort", "quit"]


async def test_accept_at_connect_skips_the_milter_for_the_connection() -> None:
    fake = FakeMilter({"connect": ACCEPT})
    async with fake.serving() as address, Milters(settings(address)) as milters:
        await transaction(milters)
        assert (await milters.message(lambda: [MESSAGE], ENVELOPE)).decision.proceed
    assert fake.sessions[0].stages() == ["connect", "quit"]


async def test_discard_at_rcpt_lets_the_command_pass_and_drops_the_message() -> None:
    fake = FakeMilter({"rcpt": DISCARD})
    async with fake.serving() as address, Milters(settings(address)) as milters:
        assert await transaction(milters) == ["ok"]
        result = await milters.message(lambda: [MESSAGE], ENVELOPE)
    assert (result.decision.kind, result.decision.milter) == (MilterVerdictKind.DISCARD, address)
    assert "eom" not in fake.sessions[0].stages()
    assert "abort" in fake.sessions[0].stages()


async def test_no_and_no_reply_flags_are_honoured() -> None:
    fake = FakeMilter(protocol=Proto.NOHELO | Proto.NOBODY | Proto.NR_HDR | Proto.NR_RCPT)
    async with fake.serving() as address, Milters(settings(address)) as milters:
        await transaction(milters)
        assert (await milters.message(lambda: [MESSAGE], ENVELOPE)).decision.proceed
    assert fake.sessions[0].stages() == [
        "connect", "mail", "rcpt", "data", "header", "header", "eoh", "eom", "quit",
    ]  # fmt: skip


async def test_unix_socket_milter(tmp_path: Path) -> None:
    fake = FakeMilter({"helo": reject("550 5.7.1 no helo")})
    async with (
        fake.serving(str(tmp_path / "milter.sock")) as address,
        Milters(settings(address)) as milters,
    ):
        assert address.startswith("unix:/")
        await milters.connect(CONTEXT)
        decision = await milters.helo("x")
        assert decision.reply == "550 5.7.1 no helo"
        # a connection-level reject holds for the rest of the connection
        assert (await milters.mail("<a@example.com>")).reply == "550 5.7.1 no helo"
    assert not (tmp_path / "milter.sock").exists()


@pytest.mark.parametrize(
    ("action", "kind", "reply"),
    [
        (DefaultAction.TEMPFAIL, MilterVerdictKind.TEMPFAIL, FAILURE_TEMPFAIL_REPLY),
        (DefaultAction.REJECT, MilterVerdictKind.REJECT, FAILURE_REJECT_REPLY),
        (DefaultAction.ACCEPT, MilterVerdictKind.CONTINUE, None),
    ],
)
async def test_unreachable_milter_gives_the_default_action(
    action: DefaultAction, kind: MilterVerdictKind, reply: str | None, tmp_path: Path
) -> None:
    gone = f"unix:{tmp_path / 'nobody.sock'}"
    async with Milters(settings(gone, default_action=action)) as milters:
        decision = await milters.connect(CONTEXT)
        assert (decision.kind, decision.reply) == (kind, reply)
        assert decision.failed == (kind is not MilterVerdictKind.CONTINUE)
        later = await milters.rcpt("<b@example.org>")
        assert later.kind is kind  # for the rest of the connection


@pytest.mark.parametrize(
    "script",
    [
        {"rcpt": HANGUP},
        {"rcpt": b"\x00\x00\x00\x01Z"},  # unknown response
        {"rcpt": b"\xff\xff\xff\xffc"},  # absurd length
        {"rcpt": AddHeader("X", "too early")},  # modification before end of message
    ],
)
async def test_a_milter_breaking_protocol_gets_the_default_action(script: object) -> None:
    fake = FakeMilter(script)  # type: ignore[arg-type]
    async with fake.serving() as address, Milters(settings(address)) as milters:
        await milters.connect(CONTEXT)
        await milters.mail("<a@example.com>")
        decision = await milters.rcpt("<b@example.org>")
    assert (decision.kind, decision.failed, decision.milter) == (
        MilterVerdictKind.TEMPFAIL,
        True,
        address,
    )


@pytest.mark.parametrize(
    ("script", "stage", "timeout"),
    [
        ({"negotiation": STALL}, "connect", "command_timeout"),
        ({"rcpt": STALL}, "rcpt", "command_timeout"),
        ({"eom": STALL}, "message", "content_timeout"),
    ],
)
async def test_a_stalled_milter_times_out(
    script: dict[str, object], stage: str, timeout: str, autojump_clock: trio.testing.MockClock
) -> None:
    negotiation = script.pop("negotiation", None)
    fake = FakeMilter(script, negotiation=negotiation)  # type: ignore[arg-type]
    config = settings("inet:127.0.0.1:1", connect_timeout=5, command_timeout=7, content_timeout=11)
    async with fake.serving() as address:
        config = settings(address, connect_timeout=5, command_timeout=7, content_timeout=11)
        async with Milters(config) as milters:
            start = trio.current_time()
            decision = await milters.connect(CONTEXT)
            if stage != "connect":
                await transaction_after_connect(milters)
                start = trio.current_time()
                if stage == "rcpt":
                    decision = await milters.rcpt("<b@example.org>")
                else:
                    decision = (await milters.message(lambda: [MESSAGE], ENVELOPE)).decision
            assert trio.current_time() - start == pytest.approx(getattr(config, timeout))
            assert (decision.kind, decision.failed) == (MilterVerdictKind.TEMPFAIL, True)


async def transaction_after_connect(milters: Milters) -> None:
    assert (await milters.helo("x")).proceed
    assert (await milters.mail("<a@example.com>")).proceed


async def test_cancellation_closes_the_milter_socket_at_once() -> None:
    fake = FakeMilter({"helo": STALL})
    async with fake.serving() as address:
        with trio.move_on_after(0.5):
            async with Milters(settings(address)) as milters:
                await milters.connect(CONTEXT)
                await milters.helo("x")  # the client leaves while we wait
        with trio.fail_after(5):
            while not fake.sessions[0].closed:
                await trio.sleep(0.01)
    assert fake.sessions[0].stages() == ["connect", "helo"]


def test_milters_list_parses_in_order() -> None:
    milters = parse_milter_list("inet:127.0.0.1:8891, unix:/run/milter.sock inet:[::1]:11332")
    assert [(m.host, m.port, m.path) for m in milters] == [
        ("127.0.0.1", 8891, None),
        (None, 0, "/run/milter.sock"),
        ("::1", 11332, None),
    ]
    for bad in ["inet:host", "tcp:1.2.3.4:5", "unix:relative", "inet::1:5", "inet:h:99999", "x"]:
        with pytest.raises(ValueError):
            parse_milter_address(bad)


async def test_progress_restarts_the_content_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    working = [Pause(8), Progress(), Pause(8), Progress(), Pause(8), AddHeader("X-Slow", "1")]
    fake = FakeMilter({"eom": [*working, CONTINUE]})
    async with fake.serving() as address:
        async with Milters(settings(address, content_timeout=10)) as milters:
            await transaction(milters)
            start = trio.current_time()
            result = await milters.message(lambda: [MESSAGE], ENVELOPE)
            assert trio.current_time() - start == pytest.approx(24)
        assert result.decision.proceed and result.modified
        fake = FakeMilter({"eom": [Pause(8), Progress(), Pause(11), CONTINUE]})
        async with fake.serving() as address, Milters(settings(address, content_timeout=10)) as m:
            await transaction(m)
            result = await m.message(lambda: [MESSAGE], ENVELOPE)
        assert (result.decision.kind, result.decision.failed) == (MilterVerdictKind.TEMPFAIL, True)
