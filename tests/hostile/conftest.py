"""The attack catalogue runs with the proxy's subreaper on, as the daemon does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trio_proxsmtp.stages import reaper


@pytest.fixture(autouse=True)
def subreaper() -> Iterator[None]:
    """Adopt filter orphans, so a killed filter leaves no zombie (this machine's pid 1
    may not reap) and setsid escapees can be swept."""
    if not reaper.enable_subreaper():
        pytest.skip("PR_SET_CHILD_SUBREAPER is not available (Linux 3.4+ only)")
    try:
        yield
    finally:
        reaper.disable_subreaper()
