"""Issue 24's log lines, through the relay in-process (docs/behaviour.md §9.2, §9.6, §9.7):
the disconnect line of each connection, the summary's client as XFORWARD told it with the
connecting address as via=, the id on a milter's connect error, and the start-up lines
with milters and no FilterCommand."""

from __future__ import annotations

import logging
import re

import pytest
import trio

from trio_proxsmtp.common.log import ID_PATTERN, LOGGER_NAME
from trio_proxsmtp.testing import FakeUpstream, run_proxy

MESSAGE = b"From: s@x\r\nSubject: t\r\n\r\nbody\r\n"


@pytest.fixture(autouse=True)
def _info_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_a_session_ends_with_its_disconnect_line(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with (
            FakeUpstream() as up,
            run_proxy("", upstream=up) as proxy,
            proxy.connect() as client,
        ):
            replies = await client.send_message("s@x", ["r@x", "q@x"], MESSAGE, helo="c")
            assert replies[-1].code == 250
            assert (await client.command("NOOP")).code == 250
            assert (await client.command("FROB")).code >= 500
            await client.quit()
    # (The line follows the close, before the server's nursery ends.)
    [line] = lines(caplog, "disconnect from")
    assert re.fullmatch(
        rf"{ID_PATTERN}: disconnect from 127\.0\.0\.1 ehlo=1 mail=1 rcpt=2 data=1 noop=1 "
        r"unknown=1 quit=1 commands=8 duration=\d+\.\d\d",
        line,
    ), line
    # The same id as the session's other lines.
    [accepted] = lines(caplog, "accepted connection from")
    assert accepted.split(":")[0] == line.split(":")[0]


async def test_a_client_that_leaves_gets_its_disconnect_line_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(10):
        async with FakeUpstream() as up, run_proxy("", upstream=up) as proxy:
            async with proxy.connect() as client:
                await client.command("EHLO c")  # and leaves, without QUIT
            await up.wait_until(lambda: up.active_connections == 0)
            await trio.sleep(0.1)
    [line] = lines(caplog, "disconnect from")
    assert line.endswith(" ehlo=1 commands=1 duration=" + line.rsplit("=", 1)[1])


async def test_the_summary_client_is_the_one_xforward_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Postfix before the proxy (before-queue) forwards the real client with XFORWARD: the
    summary names it, and the connecting Postfix as via=."""
    with trio.fail_after(10):
        async with (
            FakeUpstream() as up,
            run_proxy("", upstream=up) as proxy,
            proxy.connect() as client,
        ):
            assert (await client.command("EHLO postfix")).code == 250
            xforward = "XFORWARD NAME=mx.example ADDR=192.0.2.7 HELO=mx.example"
            assert (await client.command(xforward)).code == 250
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
            assert replies[-1].code == 250
            await client.quit()
    [summary] = lines(caplog, "client=")
    assert ": client=192.0.2.7, via=127.0.0.1, from=<s@x>, to=<r@x>, status=PASSED, " in summary


async def test_without_xforward_there_is_no_via(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with (
            FakeUpstream() as up,
            run_proxy("", upstream=up) as proxy,
            proxy.connect() as client,
        ):
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
            assert replies[-1].code == 250
            await client.quit()
    [summary] = lines(caplog, "client=")
    assert ": client=127.0.0.1, from=<s@x>" in summary
    assert "via=" not in summary


async def test_a_milter_connect_error_carries_the_connection_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A port nobody listens on: the milter's connect fails.
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = f"Milters: inet:127.0.0.1:{port}\nMilterDefaultAction: accept"
    with trio.fail_after(10):
        async with (
            FakeUpstream() as up,
            run_proxy(config, upstream=up) as proxy,
            proxy.connect() as client,
        ):
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
            assert replies[-1].code == 250
            await client.quit()
    milter_lines = lines(caplog, "milter inet:")
    assert milter_lines
    assert all(
        re.match(rf"{ID_PATTERN}: milter inet:127\.0\.0\.1:{port}: ", m) for m in milter_lines
    )


async def test_milters_without_a_filter_command_are_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The milters check the messages: no "passing messages through" warning, and the
    summary says FILTERED (the milters filtered it)."""
    from trio_proxsmtp.testing.fake_milter import FakeMilter

    milter = FakeMilter()
    with trio.fail_after(10):
        async with (
            milter.serving() as address,
            FakeUpstream() as up,
            run_proxy(f"Milters: {address}", upstream=up) as proxy,
            proxy.connect() as client,
        ):
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
            assert replies[-1].code == 250
            await client.quit()
    assert lines(caplog, "passing messages through") == []
    assert lines(caplog, "no filter command specified: messages go through the milters only")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    [summary] = lines(caplog, "client=")
    assert "status=FILTERED" in summary


async def test_no_filter_and_no_milter_still_warns(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with (
            FakeUpstream() as up,
            run_proxy("", upstream=up) as proxy,
            proxy.connect() as client,
        ):
            await client.quit()
    assert lines(caplog, "no filter command specified. passing messages through")
