"""Spool: the message on disk (spec §8.3, §9.5)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from trio_proxsmtp.stages.spool import BUFFER_SIZE, Spool


def test_create_is_private_and_named_like_proxsmtpd(tmp_path: Path) -> None:
    with Spool.create(str(tmp_path)) as spool:
        assert Path(spool.path).parent == tmp_path
        assert re.fullmatch(r"proxsmtpd\.\w{6,}", Path(spool.path).name)
        assert stat.S_IMODE(os.stat(spool.path).st_mode) == 0o600


def test_create_in_missing_directory_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Spool.create(str(tmp_path / "missing"))


def test_write_finish_chunks_round_trip_and_size(tmp_path: Path) -> None:
    data = [bytes([i % 256]) * (1000 + i) for i in range(50)]
    with Spool.create(str(tmp_path)) as spool:
        for part in data:
            spool.write(part)
        assert spool.size == sum(map(len, data))
        spool.finish()
        chunks = list(spool.chunks(chunk_size=4096))
        assert all(len(c) <= 4096 for c in chunks)
        assert b"".join(chunks) == b"".join(data)


def test_write_is_buffered_until_finish(tmp_path: Path) -> None:
    with Spool.create(str(tmp_path)) as spool:
        spool.write(b"x" * 1000)
        assert os.stat(spool.path).st_size == 0
        spool.finish()
        assert os.stat(spool.path).st_size == 1000
        with pytest.raises(ValueError):
            spool.write(b"more")


def test_chunks_read_the_spool_not_the_name_until_lent(tmp_path: Path) -> None:
    with Spool.create(str(tmp_path)) as spool:
        spool.write(b"original\r\n")
        spool.finish()
        # Someone replacing the file behind our back is not what we deliver...
        replacement = tmp_path / "new"
        replacement.write_bytes(b"forged\r\n")
        os.rename(replacement, spool.path)
        assert b"".join(spool.chunks()) == b"original\r\n"
        # ...until the file was lent to a file-mode filter, which may replace it.
        spool.lend()
        assert b"".join(spool.chunks()) == b"forged\r\n"


def test_chunks_reopens_by_name_after_mv_replace(tmp_path: Path) -> None:
    with Spool.create(str(tmp_path)) as spool:
        spool.write(b"original\r\n")
        spool.lend()
        replacement = tmp_path / "new"
        replacement.write_bytes(b"X-Added: 1\r\nreplaced body\r\n")
        os.rename(replacement, spool.path)
        assert b"".join(spool.chunks()) == b"X-Added: 1\r\nreplaced body\r\n"
        assert spool.size == len(b"X-Added: 1\r\nreplaced body\r\n")
        assert spool.refresh_size() == spool.size


def test_close_removes_file_and_is_idempotent(tmp_path: Path) -> None:
    spool = Spool.create(str(tmp_path))
    spool.write(b"data")
    spool.close()
    assert not os.path.exists(spool.path)
    spool.close()
    assert list(tmp_path.iterdir()) == []


def test_close_tolerates_file_already_gone_and_open_reader(tmp_path: Path) -> None:
    spool = Spool.create(str(tmp_path))
    spool.write(b"a" * 10)
    spool.finish()
    reader = spool.chunks(chunk_size=1)
    assert next(reader) == b"a"
    os.unlink(spool.path)
    spool.close()  # must not raise
    assert list(tmp_path.iterdir()) == []


def test_context_manager_removes_file_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), Spool.create(str(tmp_path)) as spool:
        spool.write(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_spool_fd_is_not_inherited(tmp_path: Path) -> None:
    with Spool.create(str(tmp_path)) as spool:
        spool.write(b"x")
        assert not os.get_inheritable(spool._fd)


def test_unnamed_spool_leaves_no_name_and_reads_back(tmp_path: Path) -> None:
    spool = Spool.create(str(tmp_path), named=False)
    try:
        spool.write(b"x" * 300_000)  # over the buffer: written to disk before the read
        spool.write(b"tail\r\n")
        assert list(tmp_path.iterdir()) == []  # nothing to see, nothing to clean up
        assert stat.S_IMODE(os.fstat(spool._fd).st_mode) == 0o600
        assert not os.get_inheritable(spool._fd)
        assert b"".join(spool.chunks()) == b"x" * 300_000 + b"tail\r\n"
        assert spool.size == 300_006
        with pytest.raises(ValueError):
            spool.lend()  # a file-mode filter needs a name
    finally:
        spool.close()
    spool.close()
    assert list(tmp_path.iterdir()) == []


def test_unnamed_spool_in_a_missing_directory_fails_once_it_needs_a_file(tmp_path: Path) -> None:
    with Spool.create(str(tmp_path / "missing"), named=False) as spool:
        spool.write(b"x" * (BUFFER_SIZE - 1))
        with pytest.raises(FileNotFoundError):
            spool.write(b"yy")  # past the buffer: now it needs the directory


def test_a_small_unnamed_spool_never_touches_the_disk(tmp_path: Path) -> None:
    directory = tmp_path / "missing"  # not even there: nothing is created in it
    with Spool.create(str(directory), named=False) as spool:
        spool.write(b"Subject: s\r\n\r\n")
        spool.write(b"body\r\n")
        assert spool.in_memory
        assert b"".join(spool.chunks(chunk_size=5)) == b"Subject: s\r\n\r\nbody\r\n"
        assert [len(c) for c in spool.chunks(chunk_size=6)] == [6, 6, 6, 2]
        assert list(spool.chunks()) == [b"Subject: s\r\n\r\nbody\r\n"]  # one piece
        assert spool.size == 20 and spool.in_memory
    assert not directory.exists()
    with Spool.create(str(tmp_path), named=False) as empty:
        assert list(empty.chunks()) == [] and empty.size == 0
