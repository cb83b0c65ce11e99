"""bench/tls_clients.py stays runnable: a tiny sitting, its figures present and sane.

The script's own load generator (plain and STARTTLS sessions in two processes) against the
real daemon in front of Postfix's smtp-sink: 2 sessions x a few messages, then the new
session rate, Workers 1, one round.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import trio_proxsmtp

REPO = Path(trio_proxsmtp.__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "tls_clients.py"
MESSAGES = 40  # per session: enough clock ticks of the proxy's CPU to count (100 Hz)
SESSIONS = 2


@pytest.mark.integration
def test_tls_clients_smoke(tmp_path: Path) -> None:
    if shutil.which("smtp-sink", path="/usr/sbin:/usr/bin") is None:
        pytest.skip("smtp-sink is needed (apt-get install postfix)")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed for the certificates (apt-get install openssl)")
    out = tmp_path / "out.json"
    command = [sys.executable, str(SCRIPT), "--sessions", str(SESSIONS), "--messages"]
    command += [str(MESSAGES), "--rounds", "1", "--workers", "1", "--hs-sessions", str(SESSIONS)]
    command += ["--json", str(out)]
    # Its own group: the proxy, the sink and the load die with it if it hangs.
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "STARTTLS rate >= 0.75x plain" in stdout  # the target line, met or not
    runs = json.loads(out.read_text())["runs"]

    messages = runs["messages"]["1"]["2"]
    assert set(messages) == {"plain", "STARTTLS"}
    for mode, (r,) in messages.items():
        assert r["errors"] == 0 and not r["died"], (mode, r)
        assert r["count"] == SESSIONS * MESSAGES, (mode, r)  # every message at the sink, once
        assert r["rate"] > 0, (mode, r)
        assert r["cpu_ms"] > 0 and r["gen_ms"] > -1e-6, (mode, r)  # gen: a tick or less
        assert 0 < r["p50_ms"] <= r["p99_ms"] < 5000, (mode, r)

    handshakes = runs["handshakes"]["1"]["2"]
    assert set(handshakes) == {"plain", "TLS 1.3", "TLS 1.2"}
    for mode, (r,) in handshakes.items():
        assert r["errors"] == 0 and not r["died"], (mode, r)
        assert r["count"] == SESSIONS * MESSAGES, (mode, r)  # every new session finished
        assert r["rate"] > 0 and r["cpu_ms"] > 0, (mode, r)
