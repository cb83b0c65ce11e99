"""Throwaway TLS certificates for tests: a private CA, a server and a client certificate.

Made at test time with the ``openssl`` command (nothing is checked in, nothing needs a
Python crypto package)::

    certs = make_test_certificates(tmp_path)
    up = FakeUpstream(tls_certificate=certs.certificate, tls_key=certs.key)
    # the proxy trusts it with "OutTLSCAFile: {certs.ca}"

The server certificate names ``localhost``, ``127.0.0.1`` and ``::1`` (or the names you
give), so it verifies whether a client checks a host name or an IP address. Keys are EC
P-256: fast to make and accepted by every TLS library. Call it twice (two directories) for
a CA that did not sign the other's certificate, to test a verification failure.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import attrs

__all__ = ["OpenSSLMissing", "TestCertificates", "make_test_certificates"]

_DAYS = "2"


class OpenSSLMissing(RuntimeError):
    """The ``openssl`` command is not installed (Debian: ``apt-get install openssl``)."""


@attrs.frozen
class TestCertificates:
    """Paths of PEM files made by :func:`make_test_certificates`."""

    __test__ = False  # not a pytest test class, whatever its name

    ca: Path
    """The CA certificate: what a verifying client trusts (``OutTLSCAFile``)."""
    certificate: Path
    """The server certificate, signed by the CA."""
    key: Path
    """Its private key."""
    client_certificate: Path
    """A client certificate (CN ``client.example``), signed by the CA."""
    client_key: Path
    """Its private key."""


def _run(openssl: str, *args: str) -> None:
    result = subprocess.run(
        [openssl, *args], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _subject_alt_names(names: Iterable[str]) -> str:
    entries = []
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            entries.append(f"DNS:{name}")
        else:
            entries.append(f"IP:{name}")
    return ",".join(entries)


def make_test_certificates(
    directory: str | os.PathLike[str],
    *,
    names: Iterable[str] = ("localhost", "127.0.0.1", "::1"),
    ca_name: str = "trio_proxsmtp test CA",
) -> TestCertificates:
    """Make a CA and, signed by it, a server certificate for ``names`` and a client one.

    Raises :class:`OpenSSLMissing` when there is no ``openssl`` command.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise OpenSSLMissing("the openssl command is needed to make test certificates")
    names = list(names)
    if not names:
        raise ValueError("the server certificate needs at least one name")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca, ca_key = d / "ca.pem", d / "ca.key"
    _run(
        openssl,
        *("req", "-x509", *ec, "-days", _DAYS, "-subj", f"/CN={ca_name}"),
        *("-keyout", str(ca_key), "-out", str(ca)),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )

    def leaf(stem: str, common_name: str, extensions: str) -> tuple[Path, Path]:
        cert, key, csr, ext = (d / f"{stem}{s}" for s in (".pem", ".key", ".csr", ".ext"))
        _run(
            openssl,
            "req",
            *ec,
            "-subj",
            f"/CN={common_name}",
            "-keyout",
            str(key),
            "-out",
            str(csr),
        )
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n" + extensions
        )
        _run(
            openssl,
            *("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key)),
            *("-CAcreateserial", "-days", _DAYS, "-extfile", str(ext), "-out", str(cert)),
        )
        csr.unlink()
        ext.unlink()
        return cert, key

    san = _subject_alt_names(names)
    certificate, key = leaf(
        "server", names[0], f"extendedKeyUsage=serverAuth\nsubjectAltName={san}\n"
    )
    client_certificate, client_key = leaf(
        "client", "client.example", "extendedKeyUsage=clientAuth\n"
    )
    return TestCertificates(ca, certificate, key, client_certificate, client_key)
