"""Differential test: the same sessions through proxsmtpd 1.10 and through us.

The client's replies and the upstream's bytes must be equal for every case of the corpus.
The intended differences (spec §15 fixes) are each a test of their own below, asserting
what 1.10 does and what we do instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from differential import HANG, run_session, start_c, start_ours
from differential_corpus import CASES, Case

pytestmark = pytest.mark.integration


def test_corpus_is_large_enough() -> None:
    assert len({c.name for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
async def test_same_as_proxsmtpd_1_10(case: Case, tmp_path: Path) -> None:
    with trio.fail_after(60):
        (tmp_path / "c").mkdir()
        (tmp_path / "ours").mkdir()
        theirs = await run_session(start_c, case.config, case.steps, tmp_path / "c", case.upstream)
        ours = await run_session(
            start_ours, case.config, case.steps, tmp_path / "ours", case.upstream
        )
    assert HANG not in theirs.replies, "the case itself hangs 1.10: fix the corpus"
    assert ours.replies == theirs.replies
    assert ours.client_received == theirs.client_received
    assert ours.upstream == theirs.upstream
