"""TransparentProxy for real: `client` with an iptables REDIRECT (B10), `full` with TPROXY.

`client`, inside a fresh namespace: the real destination (a sink on 127.0.0.2:2525), a decoy sink
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


def send_through(python: list[str], script: str, sinks: tuple[Path, Path], log: Path) -> None:
    """Once both sinks and the proxy listen, run the client `script`; wait for delivery at
    the first sink (the real destination)."""
    for out in sinks:
        wait_until(partial(contains, out, "sink listening"), f"{out.name} sink")
    wait_until(partial(contains, log, "listening on"), "the proxy")
    sent = subprocess.run(
        [*python, "-c", script],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr + log.read_text()
    wait_until(partial(contains, sinks[0], "=== message 1"), "delivery")


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
        send_through(python, CLIENT, (real_out, decoy_out), proxy_log)
    assert "original destination" in real_out.read_text()
    assert "=== message" not in decoy_out.read_text()
    log = proxy_log.read_text()
    assert "accepted connection from: 127.0.0.3" in log


# -- TransparentProxy: full (TPROXY) ----------------------------------------------------
#
# Three namespaces: the client (10.77.1.2), a router that runs the proxy (10.77.1.1 and
# 10.77.2.1) and the server (10.77.2.2).  On the router, TPROXY hands the client's
# connection to 10.77.2.2:2525 to the proxy's listener, and the proxy connects to
# 10.77.2.2:2525 *from 10.77.1.2*; the "socket --transparent" mark brings the server's
# replies back to that socket.  The server must see the client's address, not the router's.

FULL_CLIENT = CLIENT.replace(
    '"127.0.0.2", 2525, source_address=("127.0.0.3", 0)', '"10.77.2.2", 2525'
)


@pytest.fixture
def tproxy_net() -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:6]
    names = {role: f"tp-{role}-{tag}" for role in ("client", "router", "server")}
    made: list[str] = []

    def run(ns: str, *argv: str) -> None:
        result = sh("ip", "netns", "exec", names[ns], *argv)
        if result.returncode != 0:
            pytest.skip(f"cannot set up TPROXY ({' '.join(argv)}): {result.stderr.strip()}")

    try:
        for name in names.values():
            if sh("ip", "netns", "add", name).returncode != 0:
                pytest.skip("cannot create network namespaces")
            made.append(name)
        for side, inner, outer in (
            ("client", f"c{tag}", f"p{tag}"),
            ("server", f"s{tag}", f"q{tag}"),
        ):
            link = sh(
                *("ip", "link", "add", inner, "netns", names[side], "type", "veth"),
                *("peer", "name", outer, "netns", names["router"]),
            )
            if link.returncode != 0:
                pytest.skip(f"cannot create veth pairs: {link.stderr.strip()}")
        for ns, dev, addr, gateway in (
            ("client", f"c{tag}", "10.77.1.2/24", "10.77.1.1"),
            ("server", f"s{tag}", "10.77.2.2/24", "10.77.2.1"),
        ):
            run(ns, "ip", "addr", "add", addr, "dev", dev)
            run(ns, "ip", "link", "set", dev, "up")
            run(ns, "ip", "link", "set", "lo", "up")
            run(ns, "ip", "route", "add", "default", "via", gateway)
        for dev, addr in ((f"p{tag}", "10.77.1.1/24"), (f"q{tag}", "10.77.2.1/24")):
            run("router", "ip", "addr", "add", addr, "dev", dev)
            run("router", "ip", "link", "set", dev, "up")
        run("router", "ip", "link", "set", "lo", "up")
        run("router", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        run("router", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
        mangle = ("iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp")
        run("router", *mangle, "-m", "socket", "--transparent", "-j", "MARK", "--set-mark", "1")
        run(
            "router",
            *mangle,
            *("-i", f"p{tag}", "--dport", "2525", "-j", "TPROXY"),
            *("--on-port", str(PROXY_PORT), "--tproxy-mark", "1"),
        )
        run("router", "ip", "rule", "add", "fwmark", "1", "lookup", "100")
        run("router", "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
        yield names
    finally:
        for name in made:
            sh("ip", "netns", "del", name)


def test_full_mode_connects_from_the_client_address(
    tproxy_net: dict[str, str], tmp_path: Path
) -> None:
    def python(role: str) -> list[str]:
        return ["ip", "netns", "exec", tproxy_net[role], sys.executable]

    config = write_config(
        tmp_path / "proxsmtpd.conf",
        f"Listen: {PROXY_PORT}\nTransparentProxy: full\nOutAddress: 127.0.0.1:2626\n",
    )
    real_out, decoy_out, proxy_log = tmp_path / "real", tmp_path / "decoy", tmp_path / "proxy"
    sink = ["-m", "trio_proxsmtp.testing", "sink", "--listen"]
    with (
        background([*python("server"), *sink, "10.77.2.2:2525"], real_out),
        background([*python("router"), *sink, "127.0.0.1:2626"], decoy_out),
        background(
            [*python("router"), "-m", "trio_proxsmtp", "-d", "3", "-f", str(config)], proxy_log
        ),
    ):
        send_through(python("client"), FULL_CLIENT, (real_out, decoy_out), proxy_log)
    delivered = real_out.read_text()
    assert "original destination" in delivered
    assert "peer=10.77.1.2\n" in delivered  # the server saw the client, not the router
    assert "=== message" not in decoy_out.read_text()
    assert "accepted connection from: 10.77.1.2" in proxy_log.read_text()
