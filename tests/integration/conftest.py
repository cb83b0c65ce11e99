"""Integration tests: every process a test starts is reaped before the next test begins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from integration_support import live_processes


@pytest.fixture(autouse=True)
def _no_process_survives() -> Iterator[None]:
    before = live_processes()
    yield
    assert live_processes() == before, "a process started by the test was not reaped"
