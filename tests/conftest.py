"""Fixtures for every layer: throwaway TLS certificates (a CA, a server and a client)."""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from trio_proxsmtp.testing.certs import OpenSSLMissing, TestCertificates, make_test_certificates


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI (`CI=true`, set by the CI runner) every program is installed by `.ci/run`, so a
    test that skips for a missing one is a failure there, never a silent pass.  Elsewhere
    (a developer without Exim, say) a skip stays a skip, with its reason."""
    report = yield
    in_ci = os.environ.get("CI") == "true"
    if in_ci and report.skipped and call.excinfo is not None and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may skip: {call.excinfo.value}"
    return report


@pytest.fixture(scope="session")
def test_certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    """A CA with a server certificate for localhost/127.0.0.1/::1 and a client one."""
    try:
        return make_test_certificates(tmp_path_factory.mktemp("tls"))
    except OpenSSLMissing:  # .ci/run installs it
        pytest.skip("openssl is needed to make the test certificates (apt-get install openssl)")


@pytest.fixture(scope="session")
def other_certificates(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    """Certificates of a second CA: trusting this CA does not verify `test_certificates`."""
    try:
        return make_test_certificates(tmp_path_factory.mktemp("tls-other"), ca_name="other CA")
    except OpenSSLMissing:
        pytest.skip("openssl is needed to make the test certificates (apt-get install openssl)")


@pytest.fixture(scope="session")
def tls_files(test_certificates: TestCertificates) -> tuple[Path, Path]:
    """(certificate, key) of the test server certificate, made now, never checked in."""
    return test_certificates.certificate, test_certificates.key
