"""The supervisor freezes what it holds before each fork (daemon/workers.py): a worker's
garbage collections then leave those objects' pages shared with the supervisor instead of
copying them (bench/README.md, "Memory": 44.0 -> 42.1 MB PSS for Workers 2 at 50 sessions).
"""

from __future__ import annotations

import gc
import os

import pytest

from trio_proxsmtp.daemon.workers import Supervisor


def test_objects_alive_at_a_fork_are_frozen_first(monkeypatch: pytest.MonkeyPatch) -> None:
    forked: list[int] = []

    def fork() -> int:  # the supervisor's side of a fork; no child is made
        forked.append(gc.get_freeze_count())
        return 2**22 + 1  # a pid no process has (above the default pid_max)

    gc.unfreeze()
    kept = {"a supervisor object": [1, 2, 3]}
    monkeypatch.setattr(os, "fork", fork)
    try:
        workers = Supervisor(1, lambda slot: 0)
        workers._start(0)
        assert forked and forked[0] > 0  # frozen before the fork, not after
        assert gc.is_tracked(kept)
        assert list(workers.pids) == [2**22 + 1]
    finally:
        gc.unfreeze()
