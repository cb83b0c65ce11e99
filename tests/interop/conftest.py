"""The interoperability suite: real mail software on either side of the proxy.

Each test is marked ``@pytest.mark.interop(pair, feature)``; at the end of the run the
matrix (pair, feature → passed / FAILED / skipped, plus the features a program does not
speak, with the reason) is printed. The unpacked Exim and OpenSMTPD come from
``tests/interop/unpack-mtas`` (see mta_support.py).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# postfix_support (a real Postfix from a temporary config) lives beside the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))

from mta_support import Exim, running_exim

from trio_proxsmtp.testing.certs import TestCertificates

# What a program does not speak, so the matrix shows why a cell is empty.
NOT_SPOKEN: dict[tuple[str, str], str] = {
    ("Exim → proxy", "XCLIENT/XFORWARD"): "Exim 4.96 sends neither",
    ("proxy → Exim", "XCLIENT"): "Exim 4.96 does not offer XCLIENT (4.97 does)",
    ("OpenSMTPD → proxy", "BDAT"): "OpenSMTPD 6.8 never sends BDAT",
    ("OpenSMTPD → proxy", "PIPELINING"): "OpenSMTPD 6.8 does not pipeline",
    ("proxy → OpenSMTPD", "STARTTLS"): (
        "OpenSMTPD 6.8 of Debian 12 fails every server-side TLS handshake (OpenSSL 3)"
    ),
    ("proxy → OpenSMTPD", "implicit TLS"): "as STARTTLS: no server-side TLS in this build",
    ("proxy → OpenSMTPD", "BDAT"): "OpenSMTPD 6.8 does not offer CHUNKING",
    ("proxy → OpenSMTPD", "PIPELINING"): "OpenSMTPD 6.8 does not offer PIPELINING",
    ("msmtp → proxy", "BDAT"): "msmtp never sends BDAT",
    ("curl → proxy", "BDAT"): "curl never sends BDAT",
    ("curl → proxy", "PIPELINING"): "curl sends one command at a time",
}

_RESULTS: dict[tuple[str, str], list[str]] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop(pair, feature): a cell of the interoperability matrix"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker in item.iter_markers("interop"):
            item.user_properties.append(("interop", tuple(marker.args)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    cells = [(str(v[0]), str(v[1])) for n, v in report.user_properties if n == "interop"]  # type: ignore[index]
    if not cells:
        return
    if report.when == "call" or not report.passed:
        outcome = {"passed": "passed", "failed": "FAILED", "skipped": "skipped"}[report.outcome]
        if report.when == "teardown" and report.failed:
            outcome = "FAILED (teardown)"
        for pair, feature in cells:
            _RESULTS.setdefault((pair, feature), []).append(outcome)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RESULTS:
        return
    terminalreporter.section("interoperability matrix")
    cells = {key: _worst(value) for key, value in _RESULTS.items()}
    pairs = {pair for pair, _ in cells}
    for (pair, feature), reason in NOT_SPOKEN.items():
        if pair in pairs:
            cells.setdefault((pair, feature), f"n/a: {reason}")
    width = max(len(pair) for pair, _ in cells)
    feature_width = max(len(feature) for _, feature in cells)
    for pair, feature in sorted(cells):
        terminalreporter.write_line(
            f"{pair:<{width}}  {feature:<{feature_width}}  {cells[pair, feature]}"
        )


def _worst(outcomes: list[str]) -> str:
    for worst in ("FAILED (teardown)", "FAILED", "skipped"):
        if worst in outcomes:
            return worst
    return "passed"


@pytest.fixture(scope="module")
def exim(test_certificates: TestCertificates) -> Iterator[Exim]:
    """One Exim daemon for the module (next server and client of the proxy)."""
    with running_exim(test_certificates) as running:
        yield running
