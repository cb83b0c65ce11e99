"""Attacks 6 and 8: filter output with no size limit, and empty output taken as a message.

On main a filter's 50 MB output was delivered although MaxMessageSize was 1,000,000, and a
2 GB output filled the temp disk. Now the output is capped at the size promised to the
client (the caller passes it): spooling stops at the cap, the filter is killed, and the
client gets 451 (the message it sent was within the limit: the filter grew it). And a
filter that exits 0 with no output for a non-empty message gets 451, not an empty message.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio
from hostile_support import MESSAGE, filter_run, proxied

from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.stages.filter.verdict import FilterVerdictKind
from trio_proxsmtp.stages.settings import FilterType

LOCAL_ERROR = Reply.single(451, "Local Error")
LIMIT = 100_000


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


async def test_endless_output_is_cut_at_the_limit(spool_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # Never ends by itself: without the cap this runs into the timeout with a full disk.
    command = f"echo $$ > {pidfile}; cat >/dev/null; yes 'spam spam spam'"
    with trio.fail_after(10):
        start = trio.current_time()
        verdict, delivered = await filter_run(spool_dir, command, size_limit=LIMIT, timeout=60)
        assert trio.current_time() - start < 5
    assert verdict.kind is FilterVerdictKind.ERROR
    assert verdict.reply == LOCAL_ERROR
    assert verdict.status == "FILTER-ERROR"
    assert "exceeds the size limit of 100000" in verdict.detail
    assert delivered is None
    with pytest.raises(ProcessLookupError):
        os.killpg(int(pidfile.read_text()), 0)


async def test_spooling_stops_at_the_cap(spool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_proxsmtp.stages import spool as spool_module

    written: list[int] = []
    real_write = spool_module.Spool.write

    def counting_write(self: spool_module.Spool, data: bytes) -> None:
        if not self.named:  # the output spool
            written.append(len(data))
        real_write(self, data)

    monkeypatch.setattr(spool_module.Spool, "write", counting_write)
    with trio.fail_after(10):
        verdict, _ = await filter_run(
            spool_dir, "cat >/dev/null; head -c 50000000 /dev/zero", size_limit=LIMIT
        )
    assert verdict.kind is FilterVerdictKind.ERROR
    assert sum(written) <= LIMIT


@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT])
async def test_output_up_to_the_limit_is_delivered(spool_dir: Path, size: int) -> None:
    with trio.fail_after(10):
        verdict, delivered = await filter_run(
            spool_dir, f"cat >/dev/null; head -c {size} /dev/zero", size_limit=LIMIT
        )
    assert verdict.kind is FilterVerdictKind.ACCEPT
    assert delivered is not None and len(delivered) == size


async def test_file_mode_growth_is_stopped_while_running(spool_dir: Path) -> None:
    command = f'head -c {LIMIT * 3} /dev/zero >> "$EMAIL"; sleep 30'
    with trio.fail_after(10):
        start = trio.current_time()
        verdict, _ = await filter_run(
            spool_dir, command, mode=FilterType.FILE, size_limit=LIMIT, timeout=60
        )
        assert trio.current_time() - start < 5  # the poll saw it, not the timeout
    assert verdict.kind is FilterVerdictKind.ERROR
    assert "exceeds the size limit" in verdict.detail


async def test_file_mode_replaced_by_a_bigger_file_is_refused(spool_dir: Path) -> None:
    command = f'head -c {LIMIT + 1} /dev/zero > "$EMAIL.new"; mv "$EMAIL.new" "$EMAIL"'
    with trio.fail_after(10):
        verdict, _ = await filter_run(spool_dir, command, mode=FilterType.FILE, size_limit=LIMIT)
    assert verdict.kind is FilterVerdictKind.ERROR
    assert (
        verdict.detail == f"filter output of {LIMIT + 1}+ bytes exceeds the size limit of {LIMIT}"
    )


async def test_no_limit_means_no_cap(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, delivered = await filter_run(
            spool_dir, f"cat >/dev/null; head -c {LIMIT * 3} /dev/zero"
        )
    assert verdict.kind is FilterVerdictKind.ACCEPT
    assert delivered is not None and len(delivered) == LIMIT * 3


# -- 8: empty output --------------------------------------------------------------------


@pytest.mark.parametrize("mode", [FilterType.PIPE, FilterType.FILE])
async def test_empty_output_for_a_message_is_a_filter_error(
    spool_dir: Path, mode: FilterType
) -> None:
    command = "cat >/dev/null; exit 0" if mode is FilterType.PIPE else ': > "$EMAIL"'
    with trio.fail_after(10):
        verdict, delivered = await filter_run(spool_dir, command, mode=mode)
    assert verdict.kind is FilterVerdictKind.ERROR
    assert (verdict.reply, verdict.status) == (LOCAL_ERROR, "FILTER-ERROR")
    assert verdict.detail == f"exit 0 but no output for a message of {len(MESSAGE)} bytes"
    assert delivered is None


async def test_empty_message_through_cat_is_delivered(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, delivered = await filter_run(spool_dir, "cat", data=b"")
    assert verdict.kind is FilterVerdictKind.ACCEPT
    assert delivered == b""


async def test_empty_output_through_the_proxy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(30):
        async with (
            proxied("FilterCommand: cat >/dev/null; exit 0") as (upstream, proxy),
            proxy.connect() as client,
        ):
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
            assert replies[-1] == LOCAL_ERROR  # main: 250, and an empty message upstream
    assert upstream.transactions == []
    assert "exit 0 but no output for a message of" in caplog.text
    assert "status=FILTER-ERROR" in caplog.text


async def test_output_over_the_promised_size_through_the_proxy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # MaxMessageSize is what the client was promised: a filter's endless output is cut
    # there (451: the filter is the cause), and nothing goes upstream.
    config = "MaxMessageSize: 100000\nFilterCommand: cat >/dev/null; yes 'spam spam spam'"
    with trio.fail_after(30):
        async with proxied(config) as (upstream, proxy), proxy.connect() as client:
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
            assert replies[-1] == LOCAL_ERROR
            assert (await client.command("NOOP")).code == 250
    assert upstream.transactions == []
    assert b"spam" not in bytes(upstream.received)
    assert "exceeds the size limit of 100000" in caplog.text
