"""A filter the shell cannot run (exit 126 or 127) must never bounce mail.

On main `FilterCommand: /usr/local/bin/nonexistent-filter` gave every message a permanent
`550 Content Rejected; /bin/sh: 1: ...: not found`, showing the path to outside senders.
Now it is a temporary failure with the generic `451 Local Error`; sh's words go to the log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from hostile_support import MESSAGE, filter_run, proxied

from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.stages.filter.verdict import FilterVerdictKind

LOCAL_ERROR = Reply.single(451, "Local Error")


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


async def test_missing_program_is_a_temporary_failure(spool_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent-filter"
    with trio.fail_after(10):
        verdict, _ = await filter_run(spool_dir, str(missing))
    assert verdict.kind is FilterVerdictKind.ERROR
    assert (verdict.reply, verdict.status) == (LOCAL_ERROR, "FILTER-ERROR")
    assert verdict.detail.startswith("exit 127: command not found: ")
    assert str(missing) in verdict.detail  # for the log


async def test_program_not_executable_is_a_temporary_failure(
    spool_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "filter.sh"
    script.write_text("#!/bin/sh\ncat\n")
    script.chmod(0o644)
    with trio.fail_after(10):
        verdict, _ = await filter_run(spool_dir, f"{script} --arg")
    assert verdict.kind is FilterVerdictKind.ERROR
    assert verdict.reply == LOCAL_ERROR
    assert verdict.detail.startswith("exit 126: command not executable")


async def test_other_exit_codes_still_reject(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, _ = await filter_run(spool_dir, "cat >/dev/null; exit 125")
    assert verdict.kind is FilterVerdictKind.REJECT
    assert verdict.reply is not None and verdict.reply.code == 550


async def test_through_the_proxy_the_client_sees_no_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # The start-up check refuses a missing program, so it goes away after the start (a
    # package removed under a running proxy): the shell's 127 must still not bounce mail.
    missing = tmp_path / "nonexistent-filter"
    missing.write_text("#!/bin/sh\nexec cat\n")
    missing.chmod(0o755)
    with trio.fail_after(30):
        async with (
            proxied(f"FilterCommand: {missing}") as (upstream, proxy),
            proxy.connect() as client,
        ):
            missing.unlink()
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
    assert replies[-1] == LOCAL_ERROR
    assert str(missing) not in replies[-1].text
    assert upstream.transactions == []
    assert f"{missing}: not found" in caplog.text
