"""reaper.Tether: end of file proves the run's processes are gone; a writer never stalls us."""

from __future__ import annotations

import os

import pytest

from trio_proxsmtp.stages import reaper


def test_released_only_once_no_process_holds_the_write_end() -> None:
    tether = reaper.Tether()
    try:
        held = os.dup(tether.child_fd)  # a process of the run that still holds it
        tether.spawned()
        os.write(held, b"a filter wrote this")
        assert not tether.released()
        os.write(held, b"x" * 60_000)  # nearly a full pipe, then the holder exits
        os.close(held)
        assert tether.released()
    finally:
        tether.close()


def test_a_writer_that_never_stops_does_not_keep_the_drain_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tether = reaper.Tether()
    tether.spawned()
    reads = 0

    def endless(fd: int, size: int) -> bytes:
        nonlocal reads
        reads += 1
        if reads > 1000:
            raise AssertionError("the drain of the tether has no bound")
        return b"x" * size

    try:
        with monkeypatch.context() as patch:
            patch.setattr(reaper.os, "read", endless)
            assert not tether.released()  # someone is still writing: it holds the write end
        assert reads <= reaper._TETHER_READS
    finally:
        tether.close()
