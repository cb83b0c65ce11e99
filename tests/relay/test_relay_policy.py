"""PolicyService (docs/behaviour.md §11.9, issue 23): Postfix's policy delegation asked at
each RCPT before it goes upstream, with FakePolicy on a loopback socket (real clock, short
waits), and its failures under PolicyDefaultAction (autojump clock, memory streams)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from memory_relay import memory_proxied

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.testing import FakeClient, FakeUpstream, run_proxy
from trio_proxsmtp.testing.fake_milter import FakeMilter
from trio_proxsmtp.testing.fake_policy import HANGUP, STALL, FakePolicy, PolicyAnswer

MESSAGE = b"From: s@x\r\nSubject: t\r\n\r\nbody\r\n"


@pytest.fixture(autouse=True)
def _info_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)


@asynccontextmanager
async def policy_proxy(
    policy: FakePolicy, config: str = ""
) -> AsyncIterator[tuple[FakeUpstream, FakeClient]]:
    with trio.fail_after(20):
        async with (
            policy.serving() as address,
            FakeUpstream() as up,
            run_proxy(f"PolicyService: {address}\n{config}", upstream=up) as proxy,
            proxy.connect() as client,
        ):
            yield up, client


def by_recipient(answers: dict[str, PolicyAnswer]) -> FakePolicy:
    return FakePolicy(lambda request: answers.get(request["recipient"], "DUNNO"))


async def test_every_rcpt_is_asked_with_postfix_attributes_on_one_connection() -> None:
    policy = FakePolicy("DUNNO")
    async with policy_proxy(policy) as (up, client):
        replies = await client.send_message(
            "s@x", ["a@x", "b@x"], MESSAGE, helo="c.example", mail_parameters=["SIZE=123"]
        )
        assert [r.code for r in replies] == [250, 250, 250, 354, 250]
        replies = await client.send_message("", ["c@x"], MESSAGE)
        assert replies[-1].code == 250
        await client.quit()
    assert [t.rcpt_to for t in up.transactions] == [["a@x", "b@x"], ["c@x"]]
    assert policy.connections == 1  # reused across requests
    first, second, third = policy.requests
    assert first["request"] == "smtpd_access_policy"
    assert (first["protocol_state"], first["protocol_name"]) == ("RCPT", "ESMTP")
    assert (first["helo_name"], first["sender"], first["recipient"]) == ("c.example", "s@x", "a@x")
    assert first["client_address"] == "127.0.0.1" and first["client_port"].isdigit()
    assert first["client_name"]  # verified name, or "unknown"
    assert first["size"] == "123"
    assert first["encryption_protocol"] == first["encryption_cipher"] == ""
    assert second["recipient"] == "b@x" and second["queue_id"] == first["queue_id"]
    assert third["sender"] == "" and third["queue_id"] != first["queue_id"]


@pytest.mark.parametrize(
    ("action", "reply"),
    [
        ("REJECT", "554 5.7.1 <no@x>: Recipient address rejected: Access denied"),
        ("REJECT not here", "554 5.7.1 <no@x>: Recipient address rejected: not here"),
        ("DEFER come back", "450 4.7.1 <no@x>: Recipient address rejected: come back"),
        (
            "DEFER_IF_PERMIT 4.2.0 Greylisted",
            "450 4.2.0 <no@x>: Recipient address rejected: Greylisted",
        ),
        ("521 5.7.0 go away", "521 5.7.0 <no@x>: Recipient address rejected: go away"),
    ],
)
async def test_a_refusal_answers_that_rcpt_and_the_next_server_never_sees_it(
    action: str, reply: str
) -> None:
    policy = by_recipient({"no@x": action})
    async with policy_proxy(policy) as (up, client):
        replies = await client.send_message("s@x", ["ok@x", "no@x"], MESSAGE)
        assert replies[2].text == reply
        assert replies[-1].code == 250
        await client.quit()
    [t] = up.transactions
    assert t.rcpt_to == ["ok@x"]
    assert all(b"no@x" not in command for command in up.commands)


async def test_prepend_puts_headers_on_top_of_that_message_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = by_recipient({"a@x": "PREPEND X-Policy: one", "b@x": "PREPEND X-Policy: two"})
    async with policy_proxy(policy, "Header: X-Proxied: yes") as (up, client):
        assert (await client.send_message("s@x", ["a@x", "b@x"], MESSAGE))[-1].code == 250
        assert (await client.send_message("s@x", ["c@x"], MESSAGE))[-1].code == 250
        await client.quit()
    first, second = up.transactions
    assert first.message == (
        b"X-Policy: one\r\nX-Policy: two\r\nFrom: s@x\r\nSubject: t\r\nX-Proxied: yes\r\n"
        b"\r\nbody\r\n"
    )
    assert b"X-Policy" not in second.message


@pytest.mark.parametrize(
    "action", ["HOLD", "DISCARD", "FILTER smtp:[10.0.0.1]", "REDIRECT x@y", "BCC x@y", "OK"]
)
async def test_actions_the_proxy_cannot_do_are_logged_and_relay(
    action: str, caplog: pytest.LogCaptureFixture
) -> None:
    policy = FakePolicy(action)
    async with policy_proxy(policy) as (up, client):
        assert (await client.send_message("s@x", ["r@x"], MESSAGE))[-1].code == 250
        await client.quit()
    assert up.transactions[0].rcpt_to == ["r@x"]
    logged = [r.getMessage() for r in caplog.records if "policy service" in r.getMessage()]
    if action == "OK":
        assert logged == []
    else:
        assert any(action.split()[0] in line and "DUNNO" in line for line in logged)


async def test_the_policy_comes_before_the_milters() -> None:
    milter = FakeMilter()
    policy = by_recipient({"no@x": "REJECT"})
    async with (
        milter.serving() as address,
        policy_proxy(policy, f"Milters: {address}") as (
            up,
            client,
        ),
    ):
        replies = await client.send_message("s@x", ["ok@x", "no@x"], MESSAGE)
        assert [r.code for r in replies] == [250, 250, 554, 354, 250]
        await client.quit()
    rcpts = [c.args[0] for c in milter.sessions[0].of("rcpt")]
    assert rcpts == ["<ok@x>"]  # the milter never heard of the refused one
    assert up.transactions[0].rcpt_to == ["ok@x"]


async def test_rcpt_outside_a_transaction_is_not_asked() -> None:
    policy = FakePolicy("REJECT")
    async with policy_proxy(policy) as (_up, client):
        await client.greeting()
        await client.command("EHLO c")
        assert (await client.command("RCPT TO:<r@x>")).code == 503  # the next server's
        await client.quit()
    assert policy.requests == []


async def test_a_server_that_closed_an_idle_connection_is_asked_again_on_a_new_one() -> None:
    answers = iter(["DUNNO", HANGUP, "DUNNO"])
    policy = FakePolicy(lambda _request: next(answers))
    async with policy_proxy(policy) as (up, client):
        assert (await client.send_message("s@x", ["a@x", "b@x"], MESSAGE))[-1].code == 250
        await client.quit()
    assert up.transactions[0].rcpt_to == ["a@x", "b@x"]
    assert policy.connections == 2 and len(policy.requests) == 3


# -- failures, PolicyDefaultAction, PolicyTimeout (autojump clock) -------------------------


@pytest.mark.parametrize(
    ("default", "expected"), [("tempfail", 451), ("dunno", 250)], ids=["tempfail", "dunno"]
)
@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (STALL, "no answer within 7s"),
        (HANGUP, "connection closed before the answer"),
        (b"garbage\n\n", "protocol error: not name=value"),
        (b"action=DUNNO\n" + b"x" * 9000, "protocol error: answer longer than 8192 bytes"),
    ],
    ids=["stall", "hangup", "garbage", "too-long"],
)
async def test_a_failing_service_gets_the_default_action(
    answer: PolicyAnswer,
    reason: str,
    default: str,
    expected: int,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = FakePolicy(answer)
    with trio.fail_after(600):
        async with policy.serving() as address:
            config = f"PolicyService: {address}\nPolicyTimeout: 7\nPolicyDefaultAction: {default}"
            config += "\nTimeOut: 100"
            async with memory_proxied(config) as (up, proxy), proxy.connect(timeout=50) as client:
                start = trio.current_time()
                replies = await client.send_message("s@x", ["r@x"], MESSAGE)
                elapsed = trio.current_time() - start
    if answer is STALL:
        assert elapsed == pytest.approx(7, abs=0.5)  # PolicyTimeout, once (a fresh connection)
    if expected == 451:
        assert replies[1].text == "451 4.3.5 Server configuration problem"
        assert not up.transactions
    else:
        assert replies[-1].code == 250 and up.transactions[0].rcpt_to == ["r@x"]
    [logged] = [r.getMessage() for r in caplog.records if "PolicyDefaultAction" in r.getMessage()]
    assert reason in logged and f"PolicyDefaultAction {default}" in logged


async def test_a_stall_on_a_reused_connection_waits_one_policy_timeout_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The second RCPT goes over the connection the first used; the service then stalls.
    # Only a closed idle connection is worth a second try: a timeout is not retried, so the
    # RCPT waits PolicyTimeout once, not twice (or more) over.
    policy = FakePolicy(lambda request: "DUNNO" if request["recipient"] == "a@x" else STALL)
    with trio.fail_after(600):
        async with policy.serving() as address:
            config = f"PolicyService: {address}\nPolicyTimeout: 7\nTimeOut: 100"
            async with memory_proxied(config) as (_up, proxy), proxy.connect(timeout=50) as client:
                start = trio.current_time()
                replies = await client.start_message("s@x", ["a@x", "b@x"])
                elapsed = trio.current_time() - start
    assert [r.code for r in replies][-3:] == [250, 451, 354]  # a@x relayed, b@x refused
    assert elapsed == pytest.approx(7, abs=0.5)  # before: 14, a second try timed out too
    assert policy.connections == 1


async def test_an_unreachable_service_gets_the_default_action(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.socket.socket() as sock:  # bound, never listening: connections are refused
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = f"PolicyService: inet:127.0.0.1:{port}\n"
        with trio.fail_after(60):
            async with memory_proxied(config) as (up, proxy), proxy.connect() as client:
                replies = await client.send_message("s@x", ["r@x"], MESSAGE)
    assert replies[1].code == 451 and not up.transactions
