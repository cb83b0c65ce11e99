"""Issue 21, item 13: a milter that answers badly or endlessly.

A malformed SMFIR_REPLYCODE (a bare CR or LF, a trailing CRLF, a broken continuation, codes
that differ between lines, an enhanced status code of another class) was taken as the
milter's reply; it is now the milter's protocol error, so MilterDefaultAction answers
(docs/behaviour.md §6.5). A milter's answer to one stage is due MilterCommandTimeout or
MilterContentTimeout after the command: packets trickling in no longer restart the wait,
PROGRESS does but never past 10 timeouts, and more than MAX_ANSWERS packets before the
verdict is a protocol error. The relay runs on memory streams under the autojump clock; the
fake milter is on loopback.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from hostile_support import memory_connection

from trio_proxsmtp.protocol.milter.codec import encode_response
from trio_proxsmtp.protocol.milter.codes import MAX_ANSWERS
from trio_proxsmtp.protocol.milter.messages import AddHeader, Progress
from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.fake_milter import CONTINUE, Answer, FakeMilter, Pause, reject

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"
# The milters' own bounds are under test here: MessageTimeOut, which bounds the whole
# way from the final dot (test_hostile_message_timeout.py), is set out of their way.
TIMEOUTS = (
    "MilterCommandTimeout: 7\nMilterContentTimeout: 10\nTimeOut: 100000\nMessageTimeOut: 100000\n"
)
# MilterDefaultAction → the codes the client gets for MAIL, RCPT (DATA, the dot).
AT_RCPT = {"tempfail": [250, 451], "reject": [250, 554], "accept": [250, 250, 354, 250]}
AT_EOM = {"tempfail": [250, 250, 354, 451], "reject": [250, 250, 354, 554]}
AT_EOM["accept"] = AT_RCPT["accept"]


async def run(stage: str, answer: Answer, action: str) -> tuple[list[int], FakeUpstream, float]:
    """One message through the proxy with one milter answering `stage` so; the codes the
    client got, the upstream, and the seconds from MAIL to the last reply."""
    milter = FakeMilter({stage: answer})
    up = FakeUpstream()
    async with milter.serving() as address:
        config = f"Milters: {address}\nMilterDefaultAction: {action}\n{TIMEOUTS}"
        async with memory_connection(config, up) as (client, _):
            await client.command("EHLO c")
            start = trio.current_time()
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c")
            elapsed = trio.current_time() - start
            await client.command("QUIT")
    return [r.code for r in replies], up, elapsed


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def delivered(
    up: FakeUpstream, codes: list[int], action: str, expected: dict[str, list[int]]
) -> None:
    assert codes == expected[action]
    assert len(up.transactions) == (1 if action == "accept" else 0)


MALFORMED = {
    "bare LF": "550 5.7.1 no\n250 2.0.0 Ok",
    "bare CR": "550 5.7.1 no\r250 2.0.0 Ok",
    "trailing CRLF": "550 5.7.1 no\r\n",
    "CRLF then no code": "550-5.7.1 no\r\nthanks",
    "CRLF then an empty line": "550-5.7.1 no\r\n\r\n550 5.7.1 thanks",
    "last line continues": "550-5.7.1 one\r\n550-5.7.1 two",
    "a lone continuation": "550-5.7.1 more to come",
    "a middle line ends": "550 5.7.1 one\r\n550 5.7.1 two",
    "codes differ between lines": "550-5.7.1 one\r\n450 4.7.1 two",
    "enhanced code of another class": "550 4.7.1 try again later",
    "tempfail with a permanent code": "451 5.7.1 never",
    "a control character": "550 5.7.1 \x1b[2Jno",
}


@pytest.mark.parametrize("action", ["tempfail", "reject", "accept"])
@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_reply_falls_to_the_default_action(
    text: str, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    codes, up, _ = await run("rcpt", reject(text), action)
    delivered(up, codes, action, AT_RCPT)
    assert any("rcpt: protocol error: milter reply" in line for line in warnings(caplog))


@pytest.mark.parametrize("action", ["tempfail", "accept"])
async def test_a_malformed_reply_at_end_of_message_too(
    action: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    codes, up, _ = await run("eom", reject("550 5.7.1 spam\n250 2.0.0 Ok"), action)
    delivered(up, codes, action, AT_EOM)
    assert any("message: protocol error: milter reply" in line for line in warnings(caplog))


async def test_a_well_formed_multi_line_reply_is_still_the_clients_answer() -> None:
    """A guard (held before): smfi_setmlreply's form is the milter's verdict, not an error."""
    codes, up, _ = await run("rcpt", reject("550-5.7.1 one\r\n550 5.7.1 two"), "accept")
    assert codes == [250, 550] and not up.transactions


# -- how long and how much before the verdict ----------------------------------------------


@pytest.mark.parametrize("action", ["tempfail", "accept"])
async def test_modifications_trickling_in_do_not_restart_the_deadline(
    action: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    trickle = [item for n in range(5) for item in (Pause(6), AddHeader("X-Slow", str(n)))]
    codes, up, elapsed = await run("eom", [*trickle, CONTINUE], action)
    delivered(up, codes, action, AT_EOM)
    assert elapsed == pytest.approx(10)  # MilterContentTimeout from the end of message
    assert any("timed out waiting for an answer" in line for line in warnings(caplog))
    if action == "accept":
        assert b"X-Slow" not in up.transactions[0].message  # the failed milter's edits go


async def test_a_verdict_dripping_byte_by_byte_is_held_to_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    drip = [item for byte in encode_response(CONTINUE) for item in (Pause(5), bytes([byte]))]
    codes, up, elapsed = await run("rcpt", drip, "tempfail")
    delivered(up, codes, "tempfail", AT_RCPT)
    assert elapsed == pytest.approx(7)  # MilterCommandTimeout


@pytest.mark.parametrize(("stage", "timeout"), [("rcpt", 7), ("eom", 10)])
async def test_endless_progress_ends_at_ten_timeouts(
    stage: str,
    timeout: int,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    working = [item for _ in range(1000) for item in (Pause(timeout - 1), Progress())]
    codes, up, elapsed = await run(stage, [*working, CONTINUE], "tempfail")
    delivered(up, codes, "tempfail", AT_RCPT if stage == "rcpt" else AT_EOM)
    assert elapsed == pytest.approx(10 * timeout)
    assert any("PROGRESS extends a stage to 10 timeouts" in line for line in warnings(caplog))


async def test_progress_within_its_limit_is_still_honoured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A guard (held before): PROGRESS each 9 s of a 10 s timeout, for 81 s, then a verdict."""
    working = [item for _ in range(9) for item in (Pause(9), Progress())]
    codes, up, elapsed = await run("eom", [*working, Pause(9), CONTINUE], "tempfail")
    assert codes == [250, 250, 354, 250] and len(up.transactions) == 1
    assert elapsed == pytest.approx(90)


FLOODS = {
    "progress at rcpt": ("rcpt", encode_response(Progress())),
    "progress at eom": ("eom", encode_response(Progress())),
    "headers at eom": ("eom", encode_response(AddHeader("X-Flood", "1"))),
}


@pytest.mark.parametrize("action", ["tempfail", "accept"])
@pytest.mark.parametrize(("stage", "packet"), FLOODS.values(), ids=FLOODS.keys())
async def test_a_flood_of_packets_before_the_verdict_is_cut_at_the_bound(
    stage: str, packet: bytes, action: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    flood = packet * (MAX_ANSWERS + 1) + encode_response(CONTINUE)
    codes, up, _ = await run(stage, flood, action)
    delivered(up, codes, action, AT_RCPT if stage == "rcpt" else AT_EOM)
    assert any(f"more than {MAX_ANSWERS} packets" in line for line in warnings(caplog))
    if action == "accept":
        assert b"X-Flood" not in up.transactions[0].message
