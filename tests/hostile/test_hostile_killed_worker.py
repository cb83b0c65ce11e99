"""Attack: SIGKILL the worker that owns a connection (issue 21, item 2; docs/behaviour.md
§11.6).

Every named file a process makes in TempDirectory carries its pid, so that the files of a
dead worker can be told from the others and removed.
"""

from __future__ import annotations

import os
from pathlib import Path

from trio_proxsmtp.stages.spool import RECIPIENTS_KIND, Spool, named_prefix, sweep_files


def test_only_the_dead_workers_own_files_are_swept(tmp_path: Path) -> None:
    with Spool.create(str(tmp_path)) as mine:
        assert Path(mine.path).name.startswith(named_prefix(pid=os.getpid()))
    dead, other = 4242, 42421  # the dead pid is a prefix of the other's digits
    names = {
        f"proxsmtpd.{dead}_abc123": True,
        f"{RECIPIENTS_KIND}{dead}_def456": True,
        f"proxsmtpd.{other}_abc123": False,
        f"proxsmtpd.{dead}abc123": False,
        "unrelated": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f"proxsmtpd.{dead}_dir").mkdir()  # not a regular file: left
    outside = tmp_path / "outside"
    outside.write_bytes(b"x")
    (tmp_path / f"proxsmtpd.{dead}_link").symlink_to(outside)  # a link: never followed
    removed = sweep_files(str(tmp_path), dead)
    assert sorted(removed) == sorted(str(tmp_path / n) for n, swept in names.items() if swept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            *(n for n, swept in names.items() if not swept),
            *(f"proxsmtpd.{dead}_{n}" for n in ("dir", "link")),
            "outside",
        ]
    )
    assert sweep_files(str(tmp_path / "missing"), dead) == []
