"""The example filters in contrib/filters, run by the real proxy against stub scanners."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from trio_proxsmtp.testing import FakeUpstream, run_proxy

FILTERS = Path(__file__).resolve().parents[2] / "contrib" / "filters"

# Stand-ins for clamdscan and spamc: the message itself says what they find.
CLAMDSCAN = """#!/bin/sh
for last; do :; done
if grep -q EICAR "$last"; then echo "$last: Eicar-Test-Signature FOUND"; exit 1; fi
if grep -q SCANNER-DOWN "$last"; then echo "ERROR: Can't connect to clamd"; exit 2; fi
exit 0
"""
SPAMC = """#!/bin/sh
message=$(cat; echo x)
case $message in
    *SPAMD-DOWN*) exit 69 ;;
    *VIAGRA*) printf 'X-Spam-Status: Yes, score=15.2 required=5.0\\r\\n' ;;
    *) printf 'X-Spam-Status: No, score=-0.1 required=5.0\\r\\n' ;;
esac
printf '%s' "${message%x}"
"""


@pytest.fixture
def scanners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("clamdscan", CLAMDSCAN), ("spamc", SPAMC)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


async def deliver(config: str, body: bytes) -> tuple[int, str, list[bytes]]:
    """(final reply code, its text, messages that arrived upstream)."""
    with trio.fail_after(20):
        async with (
            FakeUpstream() as up,
            run_proxy(config, upstream=up) as proxy,
            proxy.connect() as client,
        ):
            await client.greeting()
            replies = await client.send_message("s@x", ["r@x"], b"Subject: t\r\n\r\n" + body)
            assert proxy.leftovers() == []
    return replies[-1].code, replies[-1].text, [t.message for t in up.transactions]


CLAMAV = f"FilterType: file\nFilterCommand: {FILTERS / 'clamav.sh'}\n"
SPAM = f"FilterCommand: {FILTERS / 'spamassassin.sh'}\n"


@pytest.mark.usefixtures("scanners")
async def test_clamav_clean_message_is_delivered() -> None:
    code, _, arrived = await deliver(CLAMAV, b"hello\r\n")
    assert code == 250 and arrived == [b"Subject: t\r\n\r\nhello\r\n"]


@pytest.mark.usefixtures("scanners")
async def test_clamav_virus_is_rejected_with_its_name() -> None:
    code, text, arrived = await deliver(CLAMAV, b"X5O!P%@AP EICAR test\r\n")
    assert (code, text) == (550, "550 5.7.1 Virus found: Eicar-Test-Signature")
    assert arrived == []


@pytest.mark.usefixtures("scanners")
async def test_clamav_scanner_failure_is_a_temporary_error() -> None:
    code, _, arrived = await deliver(CLAMAV, b"SCANNER-DOWN\r\n")
    assert code == 451 and arrived == []


@pytest.mark.usefixtures("scanners")
async def test_spamassassin_ham_is_delivered_with_its_headers() -> None:
    code, _, arrived = await deliver(SPAM, b"hello\r\n")
    assert code == 250
    assert arrived == [b"X-Spam-Status: No, score=-0.1 required=5.0\r\nSubject: t\r\n\r\nhello\r\n"]


@pytest.mark.usefixtures("scanners")
async def test_spamassassin_spam_over_the_threshold_is_rejected() -> None:
    code, text, arrived = await deliver(SPAM, b"buy VIAGRA\r\n")
    assert (code, text) == (550, "550 5.7.1 Message rejected as spam (score 15.2)")
    assert arrived == []


@pytest.mark.usefixtures("scanners")
async def test_spamassassin_fails_open_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, arrived = await deliver(SPAM, b"SPAMD-DOWN\r\n")
    assert code == 250 and arrived == [b"Subject: t\r\n\r\nSPAMD-DOWN\r\n"]
    monkeypatch.setenv("SPAM_FAIL_CLOSED", "1")
    code, _, arrived = await deliver(SPAM, b"SPAMD-DOWN\r\n")
    assert code == 451 and arrived == []


@pytest.fixture
def no_scanners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH with the tools the scripts use, and neither clamdscan nor spamc."""
    bin_dir = tmp_path / "tools"
    bin_dir.mkdir()
    for tool in ("cat", "mktemp", "rm", "sed", "head", "awk"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))


@pytest.mark.usefixtures("no_scanners")
@pytest.mark.parametrize("config", [CLAMAV, SPAM], ids=["clamav", "spam"])
async def test_missing_scanner_fails_closed(config: str) -> None:
    code, text, arrived = await deliver(config, b"hello\r\n")
    assert code == 451 and arrived == []
    assert "unavailable" in text


@pytest.mark.usefixtures("no_scanners")
@pytest.mark.parametrize("script", ["clamav.sh", "spamassassin.sh"])
def test_missing_scanner_is_said_on_stderr(script: str, tmp_path: Path) -> None:
    message = tmp_path / "m.eml"
    message.write_bytes(b"Subject: t\r\n\r\nhello\r\n")
    with message.open("rb") as stdin:
        result = subprocess.run(
            [str(FILTERS / script)],
            stdin=stdin,
            env={**os.environ, "EMAIL": str(message), "TMPDIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    assert result.returncode != 0 and result.stdout == ""
    *before, reply = result.stderr.splitlines()
    assert reply.startswith("451 4.3.0 ")
    scanner = "clamdscan" if script == "clamav.sh" else "spamc"
    assert before == [
        f"{script}: {scanner} not found in PATH ({os.environ['PATH']}): failing closed"
    ]
