"""Real milters started per test: OpenDKIM with a key made by opendkim-genkey."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from milter_support import (
    DOMAIN,
    SELECTOR,
    OpenDKIM,
    free_port,
    start_opendkim,
    wait_listening,
)


def opendkim_settings(mode: str) -> str:
    return "\n".join(
        [
            f"Mode {mode}",
            "Socket inet:8891@127.0.0.1",
            f"Domain {DOMAIN}",
            f"Selector {SELECTOR}",
            "KeyFile keys/test.private",
            "Canonicalization relaxed/simple",
        ]
    )


@pytest.fixture(scope="module")
def opendkim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenDKIM]:
    """Signing for internal hosts (127.0.0.1), verifying for the others."""
    tmp_path = tmp_path_factory.mktemp("opendkim")
    yield from start_opendkim(tmp_path, opendkim_settings("sv"), DOMAIN, SELECTOR)


@pytest.fixture(scope="module")
def opendkim_verifier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenDKIM]:
    """Verifying only (Mode v): what a proxy in front of an inbound server runs."""
    tmp_path = tmp_path_factory.mktemp("opendkim-v")
    # The proxy's test client is 127.0.0.1, an internal host by default: OpenDKIM does not
    # check mail from internal hosts, so here they are another address.
    settings = opendkim_settings("v") + "\nInternalHosts 192.0.2.1"
    yield from start_opendkim(tmp_path, settings, DOMAIN, SELECTOR)


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """rspamd's proxy worker in milter mode, scanning by itself; yields its Milters: address.

    The packaged rules from /etc/rspamd are used unchanged: our overrides live in a temp
    LOCAL_CONFDIR (one milter worker on a free port, no other workers, logs to stderr, DNS
    pointed at a closed local port so that nothing waits on the network).
    """
    binary = shutil.which("rspamd")
    if binary is None or not Path("/etc/rspamd/rspamd.conf").exists():
        pytest.skip("rspamd not installed (apt-get install rspamd)")
    tmp_path = tmp_path_factory.mktemp("rspamd")
    local = tmp_path / "local"
    (local / "override.d").mkdir(parents=True)
    port = free_port()
    overrides = {
        "worker-proxy.inc": f"""
            bind_socket = "127.0.0.1:{port}";
            milter = yes;
            timeout = 30s;
            count = 1;
            upstream "local" {{ default = yes; self_scan = yes; }}
        """,
        "worker-normal.inc": "enabled = false;",
        "worker-controller.inc": "enabled = false;",
        "worker-fuzzy.inc": "enabled = false;",
        "logging.inc": 'type = "console"; level = "error";',
        "options.inc": 'dns { nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }',
    }
    for name, text in overrides.items():
        (local / "override.d" / name).write_text(text + "\n")
    for name in ("db", "run"):
        (tmp_path / name).mkdir()
    command = [binary, "-f", "-i", "-u", "root", "-g", "root"]
    for var, value in {
        "LOCAL_CONFDIR": local,
        "DBDIR": tmp_path / "db",
        "RUNDIR": tmp_path / "run",
        "LOGDIR": tmp_path,
    }.items():
        command += ["--var", f"{var}={value}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The first start compiles rspamd's regular expressions: allow for it.
        wait_listening(port, process, timeout=120)
        yield f"inet:127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
