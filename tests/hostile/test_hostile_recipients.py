"""Attack 3: a recipient list larger than an environment string can carry.

On main, 1,000 recipients of 140 bytes (within Postfix's default limit of 1,000) made the
filter's exec fail with "Argument list too long", and every retry got 451.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from hostile_support import MESSAGE, environment, filter_run, memory_connection, proxied

from trio_proxsmtp.stages.filter.environment import RECIPIENTS_ENV_LIMIT
from trio_proxsmtp.stages.filter.verdict import FilterVerdictKind
from trio_proxsmtp.testing import FakeUpstream

BIG = [f"{i:04d}" + "r" * 130 + "@x.org" for i in range(1000)]  # 140 bytes each


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


async def test_big_recipient_list_reaches_the_filter_through_a_file(
    spool_dir: Path, tmp_path: Path
) -> None:
    assert {len(r) for r in BIG} == {140}
    seen, mode, unset = tmp_path / "seen", tmp_path / "mode", tmp_path / "unset"
    command = (
        f'cp "$RECIPIENTS_FILE" {seen}; stat -c %a "$RECIPIENTS_FILE" > {mode}; '
        f'echo "${{RECIPIENTS-unset}}" > {unset}; '
        f'case "$RECIPIENTS_FILE" in "$TMPDIR"/*) cat ;; *) exit 3 ;; esac'
    )
    with trio.fail_after(20):
        verdict, delivered = await filter_run(
            spool_dir, command, env=environment(spool_dir, recipients=BIG)
        )
    assert verdict.kind is FilterVerdictKind.ACCEPT, verdict
    assert delivered == MESSAGE
    assert seen.read_text() == "".join(f"{r}\n" for r in BIG)  # one per line
    assert mode.read_text().strip() == "600"
    assert unset.read_text().strip() == "unset"  # never a truncated list
    # filter_run checked that the file is gone from TempDirectory.


async def test_small_recipient_list_stays_in_the_environment(
    spool_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = f'printf "%s|%s" "$RECIPIENTS" "${{RECIPIENTS_FILE-unset}}" > {out}; cat'
    with trio.fail_after(20):
        verdict, _ = await filter_run(
            spool_dir, command, env=environment(spool_dir, recipients=["a@x", "b@x"])
        )
    assert verdict.kind is FilterVerdictKind.ACCEPT
    assert out.read_text() == "a@x\nb@x|unset"


async def test_limit_is_on_the_encoded_size(spool_dir: Path, tmp_path: Path) -> None:
    # Exactly at the limit: still the variable. One byte more: the file.
    out = tmp_path / "out"
    command = f'echo "${{RECIPIENTS_FILE-unset}}" > {out}; cat'
    at_limit = ["x" * (RECIPIENTS_ENV_LIMIT - 2) + "é"]  # é is two bytes in UTF-8
    over = ["x" * (RECIPIENTS_ENV_LIMIT - 1) + "é"]
    with trio.fail_after(20):
        await filter_run(spool_dir, command, env=environment(spool_dir, recipients=at_limit))
        assert out.read_text().strip() == "unset"
        await filter_run(spool_dir, command, env=environment(spool_dir, recipients=over))
        assert out.read_text().strip().startswith(f"{spool_dir}/proxsmtpd-rcpt.")


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("cat >/dev/null; echo '550 no' >&2; exit 1", FilterVerdictKind.REJECT),
        ("cat >/dev/null; kill -9 $$", FilterVerdictKind.ERROR),
        ("sleep 30", FilterVerdictKind.ERROR),  # the timeout
    ],
)
async def test_recipients_file_removed_on_every_path(
    spool_dir: Path, command: str, kind: FilterVerdictKind
) -> None:
    with trio.fail_after(20):
        verdict, _ = await filter_run(
            spool_dir,
            command,
            env=environment(spool_dir, recipients=BIG),
            timeout=0.5,
        )
    assert verdict.kind is kind


async def test_recipients_file_removed_when_cancelled(spool_dir: Path) -> None:
    with trio.fail_after(20):
        with trio.move_on_after(0.5) as scope:
            await filter_run(spool_dir, "sleep 30", env=environment(spool_dir, recipients=BIG))
        assert scope.cancelled_caught
    assert list(spool_dir.iterdir()) == []


async def test_big_recipient_list_through_the_proxy(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    config = f'FilterCommand: cat "$RECIPIENTS_FILE" > {seen}; cat'
    with trio.fail_after(60):
        async with proxied(config) as (upstream, proxy), proxy.connect() as client:
            replies = await client.send_message("s@x", BIG, MESSAGE, pipelined=True)
            assert replies[-1].code == 250, replies[-1]
    assert seen.read_text().splitlines() == BIG
    assert upstream.transactions[0].rcpt_to == BIG


async def test_max_recipients_is_answered_here(autojump_clock: trio.testing.MockClock) -> None:
    # Attack 4: the envelope (kept in memory) never grows past MaxRecipients; the rest get
    # 452 4.5.3 (the client retries them later) and are never forwarded.
    wanted = [f"r{i}@x" for i in range(5)]
    async with FakeUpstream() as up, memory_connection("MaxRecipients: 3", up) as (client, _):
        replies = await client.send_message("s@x", wanted, MESSAGE, pipelined=True)
    assert [r.code for r in replies[1:6]] == [250, 250, 250, 452, 452]
    assert replies[4].to_bytes() == b"452 4.5.3 Too many recipients\r\n"
    assert replies[-1].code == 250
    assert up.transactions[0].rcpt_to == wanted[:3]
    assert not any(b"r3@x" in c or b"r4@x" in c for c in up.commands)


async def test_the_default_limit_is_a_thousand(autojump_clock: trio.testing.MockClock) -> None:
    wanted = [f"r{i}@x" for i in range(1001)]
    async with FakeUpstream() as up, memory_connection("", up) as (client, _):
        replies = await client.send_message("s@x", wanted, MESSAGE, pipelined=True)
    assert [r.code for r in replies[1:-2]] == [250] * 1000 + [452]
    assert len(up.transactions[0].rcpt_to) == 1000
