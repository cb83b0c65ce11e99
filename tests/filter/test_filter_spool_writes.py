"""The spool's writes (issue 26): the buffered pieces go to the file in one system call,
not joined first; a short write, or more pieces than one call takes, still lands whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trio_proxsmtp.stages import spool as spool_module
from trio_proxsmtp.stages.spool import BUFFER_SIZE, Spool

PIECES = [bytes([65 + i % 26]) * 65536 for i in range(9)]  # past BUFFER_SIZE: flushed


def written_back(tmp_path: Path, pieces: list[bytes]) -> bytes:
    with Spool.create(str(tmp_path)) as spool:
        for piece in pieces:
            spool.write(piece)
        spool.finish()
        return b"".join(spool.chunks())


def test_a_flush_writes_the_pieces_in_one_call_without_joining_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real_writev = os.writev

    def counting_writev(fd: int, buffers: list[bytes]) -> int:
        calls.append(len(buffers))
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", counting_writev)
    assert written_back(tmp_path, PIECES) == b"".join(PIECES)
    assert calls[0] == BUFFER_SIZE // 65536  # the first flush: 4 pieces, one call


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def short_writev(fd: int, buffers: list[bytes]) -> int:
        return os.write(fd, buffers[0][:1000])  # the disk took a little only

    monkeypatch.setattr(os, "writev", short_writev)
    assert written_back(tmp_path, PIECES) == b"".join(PIECES)


def test_more_pieces_than_one_call_takes_are_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "_MAX_IOV", 2)
    pieces = [b"%06d\r\n" % i for i in range(40000)]  # small writes: many pieces per flush
    assert written_back(tmp_path, pieces) == b"".join(pieces)
