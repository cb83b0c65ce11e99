"""TransparentProxy `client` for real (B10): an iptables REDIRECT in a network namespace.

Inside a fresh namespace: the real destination (a sink on 127.0.0.2:2525), a decoy sink
at OutAddress (127.0.0.1:2626), the proxy on 127.0.0.1:10025 and a NAT rule that sends
connections from 127.0.0.3 to 127.0.0.2:2525 to the proxy. The proxy's own connection
comes from 127.0.0.1, so the rule does not loop it back. Mail must reach 127.0.0.2:2525.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from ops_support import ENV, ROOT, background, write_config

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and iptables need root"),
    pytest.mark.skipif(
        not (shutil.which("ip") and shutil.which("iptables")), reason="needs iproute2 and iptables"
    ),
]

PROXY_PORT = 10025
CLIENT = """\
import smtplib, sys
with smtplib.SMTP("127.0.0.2", 2525, source_address=("127.0.0.3", 0), timeout=15) as s:
    s.sendmail("a@x", ["b@x"], b"Subject: tproxy\\r\\n\\r\\noriginal destination\\r\\n")
    s.quit()
print("sent")
"""


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"trio-proxsmtp-{uuid.uuid4().hex[:8]}"
    created = sh("ip", "netns", "add", name)
    if created.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {created.stderr.strip()}")
    try:
        assert sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up").returncode == 0
        rule = sh(
            *("ip", "netns", "exec", name, "iptables", "-t", "nat", "-A", "OUTPUT"),
            *("-p", "tcp", "-s", "127.0.0.3", "-d", "127.0.0.2", "--dport", "2525"),
            *("-j", "REDIRECT", "--to-ports", str(PROXY_PORT)),
        )
        if rule.returncode != 0:
            pytest.skip(f"cannot add an iptables REDIRECT rule: {rule.stderr.strip()}")
        yield name
    finally:
        sh("ip", "netns", "del", name)


def wait_until(predicate: Callable[[], bool], what: str, deadline: float = 15) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def contains(path: Path, text: str) -> bool:
    return text in path.read_text()


def test_client_mode_relays_to_the_original_destination(netns: str, tmp_path: Path) -> None:
    inside = ["ip", "netns", "exec", netns]
    python = [*inside, sys.executable]
    config = write_config(
        tmp_path / "proxsmtpd.conf",
        f"Listen: 127.0.0.1:{PROXY_PORT}\nTransparentProxy: client\nOutAddress: 127.0.0.1:2626\n",
    )
    real_out, decoy_out, proxy_log = tmp_path / "real", tmp_path / "decoy", tmp_path / "proxy"
    sink = [*python, "-m", "trio_proxsmtp.testing", "sink", "--listen"]
    with (
        background([*sink, "127.0.0.2:2525"], real_out),
        background([*sink, "127.0.0.1:2626"], decoy_out),
        background([*python, "-m", "trio_proxsmtp", "-d", "3", "-f", str(config)], proxy_log),
    ):
        for out in (real_out, decoy_out):
            wait_until(partial(contains, out, "sink listening"), f"{out.name} sink")
        wait_until(partial(contains, proxy_log, "listening on"), "the proxy")
        sent = subprocess.run(
            [*python, "-c", CLIENT],
            env=ENV,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr + proxy_log.read_text()
        wait_until(partial(contains, real_out, "=== message 1"), "delivery")
    assert "original destination" in real_out.read_text()
    assert "=== message" not in decoy_out.read_text()
    log = proxy_log.read_text()
    assert "accepted connection from: 127.0.0.3" in log
