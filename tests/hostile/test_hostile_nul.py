"""Attack 5: a NUL byte in an accepted address crashed the session when a filter ran.

exec refuses an environment value with a NUL byte (ValueError: embedded null byte), and
only OSError was caught: internal error, traceback, 421. Now it is a clean 451 Local Error.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from hostile_support import MESSAGE, environment, filter_run, proxied

from trio_proxsmtp.protocol.smtp.commands import BAD_CHARACTER
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.stages.filter.verdict import FilterVerdictKind

LOCAL_ERROR = Reply.single(451, "Local Error")


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


@pytest.mark.parametrize("where", ["sender", "recipient"])
async def test_nul_in_the_environment_is_a_local_error(spool_dir: Path, where: str) -> None:
    env = (
        environment(spool_dir, sender="a\0b@x")
        if where == "sender"
        else environment(spool_dir, recipients=["ok@x", "a\0b@x"])
    )
    with trio.fail_after(10):
        verdict, delivered = await filter_run(spool_dir, "cat", env=env)
    assert verdict.kind is FilterVerdictKind.ERROR
    assert verdict.reply == LOCAL_ERROR
    assert verdict.status == "FILTER-ERROR"
    name = "SENDER" if where == "sender" else "RECIPIENTS"
    assert verdict.detail == f"environment variable {name} contains a NUL byte"
    assert delivered is None


async def test_nul_in_the_command_is_a_local_error_not_a_crash(spool_dir: Path) -> None:
    # The safety net: whatever else exec refuses with ValueError becomes a verdict too.
    with trio.fail_after(10):
        verdict, _ = await filter_run(spool_dir, "cat \0x")
    assert verdict.kind is FilterVerdictKind.ERROR
    assert verdict.reply == LOCAL_ERROR
    assert verdict.detail.startswith("couldn't run: ")


async def test_nul_in_an_address_through_the_proxy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The command-line check refuses it at RCPT (a clean 5xx, never forwarded), so the
    # filter never sees it; the filter's own check (above) stays as a second line.
    with trio.fail_after(30):
        async with proxied("FilterCommand: cat") as (upstream, proxy), proxy.connect() as c:
            await c.greeting()
            await c.command("EHLO c")
            assert (await c.command("MAIL FROM:<s@x>")).code == 250
            assert await c.command(b"RCPT TO:<a\x00b@x>") == BAD_CHARACTER
            assert (await c.command("RCPT TO:<ok@x>")).code == 250
            assert (await c.command("DATA")).code == 354
            await c.send(MESSAGE + b".\r\n")
            assert (await c.read_reply()).code == 250
            assert (await c.command("QUIT")).code == 221
    assert not any(b"\x00" in command for command in upstream.commands)
    assert [t.rcpt_to for t in upstream.transactions] == [["ok@x"]]
    assert "Traceback" not in caplog.text
    assert "refused a command line: NUL" in caplog.text
