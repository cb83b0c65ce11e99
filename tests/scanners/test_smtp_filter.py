"""FilterType: smtp (docs/behaviour.md §11.17): the filter is an SMTP server, here the
FakeUpstream; a 250 at the dot lets the message go on unchanged, the first refusal is the
client's reply, and an unreachable, slow or broken filter server is a 451."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from memory_relay import MemoryProxy, memory_proxied

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.stages import smtp_filter
from trio_proxsmtp.stages.filter.verdict import FilterVerdictKind
from trio_proxsmtp.stages.settings import FilterSpec, FilterType
from trio_proxsmtp.stages.smtp_filter import SmtpEnvelope, run_smtp_filter
from trio_proxsmtp.stages.spool import Spool
from trio_proxsmtp.testing import END_OF_DATA, FakeUpstream

MESSAGE = b"From: s@x\r\nSubject: t\r\n\r\n.leading dot\r\nbody\r\n"
FILTER = "filter.test:10025"


@pytest.fixture(autouse=True)
def _info_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = (r.getMessage().partition(": ")[2] for r in caplog.records)
    return [line for line in lines if line.startswith("client=")]


@asynccontextmanager
async def filtered(
    monkeypatch: pytest.MonkeyPatch, server: FakeUpstream | None, config: str = ""
) -> AsyncIterator[tuple[FakeUpstream, MemoryProxy]]:
    """The relay with FilterType: smtp towards `server` on memory streams (None: refused)."""
    async with trio.open_nursery() as nursery:

        async def connect(where: str) -> trio.abc.Stream:
            assert where == FILTER
            if server is None:
                raise smtp_filter._Broken("cannot connect to filter.test: Connection refused")
            ours, theirs = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle, theirs, "proxy")
            return ours

        monkeypatch.setattr(smtp_filter, "_connect", connect)
        text = f"FilterType: smtp\nFilterCommand: {FILTER}\n{config}"
        async with memory_proxied(text) as (up, proxy):
            yield up, proxy
        nursery.cancel_scope.cancel()


async def send(proxy: MemoryProxy, rcpts: tuple[str, ...] = ("r@x", "q@x")) -> list[str]:
    async with proxy.connect(timeout=500) as client:
        replies = await client.send_message("s@x", rcpts, MESSAGE, helo="client.example")
        await client.command("QUIT")
    return [r.to_bytes().decode().strip() for r in replies]


async def test_250_at_the_dot_delivers_the_message_unchanged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeUpstream()
    async with filtered(monkeypatch, server) as (up, proxy):
        assert (await send(proxy))[-1].startswith("250")
    [t] = up.transactions
    assert (t.message, t.rcpt_to) == (MESSAGE, ["r@x", "q@x"])
    [seen] = server.transactions
    assert (seen.mail_from, seen.rcpt_to, seen.message) == ("s@x", ["r@x", "q@x"], MESSAGE)
    verbs = [c.split()[0] for c in server.sessions[0].commands]
    assert verbs == [b"EHLO", b"XCLIENT", b"EHLO", b"MAIL", b"RCPT", b"RCPT", b"DATA", b"QUIT"]
    xclient = server.sessions[0].commands[1]
    assert xclient == b"XCLIENT ADDR=127.0.0.1 HELO=client.example"
    [summary] = summaries(caplog)
    assert "status=FILTERED" in summary


async def test_an_over_long_helo_never_goes_in_the_filters_xclient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Postfix refuses a HELO= over 255 bytes as sent: leave it out, as the session does.
    server = FakeUpstream()
    async with (
        filtered(monkeypatch, server) as (_up, proxy),
        proxy.connect(timeout=500) as client,
    ):
        replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="h" * 300)
        await client.command("QUIT")
    assert replies[-1].code == 250
    assert server.sessions[0].commands[1] == b"XCLIENT ADDR=127.0.0.1"


@pytest.mark.parametrize(
    ("replies", "expected", "status"),
    [
        ({"RCPT": "550 5.1.1 <q@x>: unknown user"}, "550 5.1.1 <q@x>: unknown user", "REJECTED"),
        ({"MAIL": "451 4.3.0 try later"}, "451 4.3.0 try later", "DEFERRED"),
        ({END_OF_DATA: "554 5.7.1 content refused"}, "554 5.7.1 content refused", "REJECTED"),
        ({"DATA": "554 5.5.1 no data"}, "554 5.5.1 no data", "REJECTED"),
    ],
)
async def test_the_first_refusal_is_the_clients_reply(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    replies: dict[str, str],
    expected: str,
    status: str,
) -> None:
    server = FakeUpstream(replies=replies)
    async with filtered(monkeypatch, server) as (up, proxy):
        assert (await send(proxy))[-1] == expected
    assert not up.transactions
    [summary] = summaries(caplog)
    assert f"status={status}" in summary and f"reason={expected}" in summary


async def test_an_unreachable_filter_server_is_451(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with filtered(monkeypatch, None) as (up, proxy):
        assert (await send(proxy))[-1] == "451 Local Error"
    assert not up.transactions
    [summary] = summaries(caplog)
    assert "status=FILTER-ERROR" in summary and "Connection refused" in summary


async def test_a_slow_filter_server_is_451_after_filter_timeout(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: object
) -> None:
    server = FakeUpstream(delays={END_OF_DATA: 100})
    async with filtered(monkeypatch, server, "FilterTimeout: 30") as (up, proxy):
        started = trio.current_time()
        assert (await send(proxy))[-1] == "451 Local Error"
        assert trio.current_time() - started == pytest.approx(30, abs=1)
    assert not up.transactions


@pytest.mark.parametrize(
    "server",
    [
        FakeUpstream(banner="554 go away"),
        FakeUpstream(banner=b"garbage without a code\r\n"),
        FakeUpstream(replies={"MAIL": "354 what"}),
        FakeUpstream(replies={END_OF_DATA: "221 bye"}),
    ],
    ids=["banner-554", "garbage", "odd-code", "dot-221"],
)
async def test_a_broken_filter_server_is_451(
    monkeypatch: pytest.MonkeyPatch, server: FakeUpstream
) -> None:
    async with filtered(monkeypatch, server) as (up, proxy):
        assert (await send(proxy))[-1] == "451 Local Error"
    assert not up.transactions


async def test_without_xclient_and_with_helo_only(tmp_path: object) -> None:
    """A real socket (a unix path), a server without EHLO: HELO, no XCLIENT."""
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "filter.sock"
    server = FakeUpstream(unix_path=path, replies={"EHLO": "502 5.5.2 no"})
    spool = Spool.create(str(tmp_path), named=False)
    spool.write(MESSAGE)
    spool.finish()
    async with server:
        spec = FilterSpec(str(path), FilterType.SMTP, 10.0, str(tmp_path))
        verdict = await run_smtp_filter(spec, spool, SmtpEnvelope("s@x", ["r@x"], "::1", "h"))
    spool.close()
    assert verdict.kind is FilterVerdictKind.ACCEPT and verdict.message is spool
    verbs = [c.split()[0] for c in server.sessions[0].commands]
    assert verbs == [b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"QUIT"]
    assert [t.message for t in server.transactions] == [MESSAGE]


async def test_the_filter_check_command_speaks_smtp_too(tmp_path: object) -> None:
    """``python -m trio_proxsmtp.testing filter --type smtp``: the same client."""
    from trio_proxsmtp.testing.filtercheck import Outcome, check_filter

    async with FakeUpstream(replies={"RCPT": "550 5.1.1 no such user"}) as server:
        spec = FilterSpec(f"127.0.0.1:{server.port}", FilterType.SMTP, 10.0, str(tmp_path))
        result = await check_filter(spec, MESSAGE, sender="<s@x>", recipients=["r@x"])
    assert (result.outcome, result.reply) == (Outcome.REJECT, "550 5.1.1 no such user")
    assert not server.transactions
    async with FakeUpstream() as server:
        spec = FilterSpec(f"127.0.0.1:{server.port}", FilterType.SMTP, 10.0, str(tmp_path))
        result = await check_filter(spec, MESSAGE, sender="<s@x>", recipients=["r@x"])
    assert (result.outcome, result.delivered) == (Outcome.DELIVER, MESSAGE)
    assert [t.mail_from for t in server.transactions] == ["s@x"]
