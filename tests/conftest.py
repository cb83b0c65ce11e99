"""Fixtures for every layer: throwaway TLS certificates (a CA, a server and a client)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_proxsmtp.testing.certs import OpenSSLMissing, TestCertificates, make_test_certificates


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
