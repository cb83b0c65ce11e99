"""The scanners' tests share the relay's memory harness (tests/relay/memory_relay.py) and
the temporary Postfix of the integration tests (tests/integration/postfix_support.py)."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
for folder in ("relay", "integration"):
    if str(TESTS / folder) not in sys.path:
        sys.path.insert(0, str(TESTS / folder))
