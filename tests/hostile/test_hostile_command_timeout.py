"""Issue 21, item 8: CommandTimeOut was 180 s whatever TimeOut said, so with `TimeOut: 4` a
client sending one byte a second held a command line for 180 s.  Now CommandTimeOut
defaults to TimeOut (a record's deadline is never looser than a read's); an explicit
CommandTimeOut still wins, looser or tighter (docs/behaviour.md §8.1).  The relay runs
under the autojump clock.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hostile_support import memory_connection

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.config.settings import deadline_settings
from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.client import FakeClient

BASE = "OutAddress: 127.0.0.1:2525\n"
TIMEOUT_REPLY = b"421 4.4.2 smtp.passthru Error: timeout exceeded\r\n"
LONG_EHLO = b"EHLO " + b"x" * 200 + b"\r\n"


async def drip(client: FakeClient, data: bytes, interval: float) -> None:
    """Send `data` one byte every `interval` seconds until done or the proxy closes."""
    for byte in data:
        try:
            await client.send(bytes([byte]))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep(interval)


async def closed_after(client: FakeClient, start: float) -> float:
    """Read until the proxy closes; how long after `start` it did."""
    with pytest.raises(EOFError):
        while True:
            await client.read_reply()
    return trio.current_time() - start


def test_command_timeout_defaults_to_timeout() -> None:
    assert parse_config(BASE + "TimeOut: 4\n").command_timeout == 4
    assert parse_config(BASE + "TimeOut: 600\n").command_timeout == 600  # looser too
    assert parse_config(BASE).command_timeout == 180  # TimeOut's default
    assert Config(timeout=4).command_timeout == 4  # a Config made in code alike
    assert deadline_settings(parse_config(BASE + "TimeOut: 4\n")).command_timeout == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TimeOut: 4\nCommandTimeOut: 30\n", 30),
        ("CommandTimeOut: 30\nTimeOut: 4\n", 30),  # whichever line comes first
        ("TimeOut: 4\nCommandTimeOut: 2\n", 2),
    ],
)
def test_an_explicit_command_timeout_wins(text: str, expected: float) -> None:
    config = parse_config(BASE + text)
    assert (config.timeout, config.command_timeout) == (4, expected)
    assert deadline_settings(config).command_timeout == expected


async def test_with_timeout_4_a_dripping_client_holds_a_command_line_4_seconds(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with FakeUpstream() as up, memory_connection("TimeOut: 4", up) as (client, _):
        await client.greeting()
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip, client, LONG_EHLO, 1.0)  # each byte within TimeOut
            held = await closed_after(client, start)
            nursery.cancel_scope.cancel()
    assert 4 <= held < 5  # was 180
    assert client.received.endswith(TIMEOUT_REPLY)
    assert "CommandTimeOut exceeded" in caplog.text
    assert not any(c.startswith(b"EHLO") for c in up.commands)


async def test_an_explicit_looser_command_timeout_still_wins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = "TimeOut: 4\nCommandTimeOut: 20"
    async with FakeUpstream() as up, memory_connection(config, up) as (client, _):
        await client.greeting()
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip, client, LONG_EHLO, 1.0)
            held = await closed_after(client, start)
            nursery.cancel_scope.cancel()
    assert 20 <= held < 21
    assert client.received.endswith(TIMEOUT_REPLY)


async def test_a_client_that_sends_its_lines_in_time_is_not_affected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pauses shorter than TimeOut between whole lines, for longer than TimeOut in all."""
    async with FakeUpstream() as up, memory_connection("TimeOut: 4", up) as (client, _):
        await client.greeting()
        start = trio.current_time()
        for _ in range(5):
            await trio.sleep(3)
            assert (await client.command("NOOP")).code == 250
        assert (await client.command("EHLO c.example")).code == 250
        assert trio.current_time() - start >= 15


async def test_a_silent_client_is_still_logged_idle(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With CommandTimeOut at TimeOut, a client that says nothing ends by TimeOut and is
    logged "client idle", as before; the clock runs (100 times real time), so the proxy's
    "ready" comes a moment before the read's start, as on a real machine."""
    mock_clock.rate = 100
    async with FakeUpstream() as up, memory_connection("TimeOut: 4", up) as (client, _):
        await client.greeting()
        start = trio.current_time()
        held = await closed_after(client, start)
    assert 4 <= held < 5
    assert client.received.endswith(TIMEOUT_REPLY)
    assert "network operation timed out: client idle" in caplog.text
    assert "CommandTimeOut exceeded" not in caplog.text
