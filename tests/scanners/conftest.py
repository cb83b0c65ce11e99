"""The scanners' tests share the relay's memory harness (tests/relay/memory_relay.py)."""

from __future__ import annotations

import sys
from pathlib import Path

RELAY = str(Path(__file__).resolve().parent.parent / "relay")
if RELAY not in sys.path:
    sys.path.insert(0, RELAY)
