"""Real milters started per test: OpenDKIM with a key made by opendkim-genkey."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from milter_support import DOMAIN, SELECTOR, OpenDKIM, free_port, txt_record, wait_listening


@pytest.fixture(scope="module")
def opendkim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenDKIM]:
    tmp_path = tmp_path_factory.mktemp("opendkim")
    binary = shutil.which("opendkim") or "/usr/sbin/opendkim"
    genkey = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"
    if not Path(binary).exists() or not Path(genkey).exists():
        pytest.skip("opendkim / opendkim-tools not installed (apt-get install opendkim-tools)")
    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run(
        [genkey, "-b", "1024", "-d", DOMAIN, "-s", SELECTOR, "-D", str(keys)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    conf = tmp_path / "opendkim.conf"
    conf.write_text(
        "\n".join(
            [
                "Mode sv",
                f"Socket inet:{port}@127.0.0.1",
                f"Domain {DOMAIN}",
                f"Selector {SELECTOR}",
                f"KeyFile {keys / (SELECTOR + '.private')}",
                "Canonicalization relaxed/simple",
                "Syslog no",
                f"PidFile {tmp_path / 'opendkim.pid'}",
                "UserID root",
                "RequireSafeKeys no",
                # Verification looks keys up here instead of in DNS (no network in tests).
                f"TestPublicKeys {tmp_path / 'keys.txt'}",
                "AuthservID test.proxy",
                "",
            ]
        )
    )
    record = txt_record(keys / f"{SELECTOR}.txt")
    (tmp_path / "keys.txt").write_bytes(
        f"{SELECTOR}._domainkey.{DOMAIN} ".encode() + record + b"\n"
    )
    process = subprocess.Popen([binary, "-f", "-x", str(conf)], stderr=subprocess.PIPE)
    try:
        wait_listening(port, process)
        yield OpenDKIM(
            f"inet:127.0.0.1:{port}", DOMAIN, SELECTOR, record, keys / f"{SELECTOR}.private"
        )
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
