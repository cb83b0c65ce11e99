"""`OutTLS: implicit` against a real Postfix smtpd in wrapper mode (TLS on connect,
``smtpd_tls_wrappermode=yes``); the rest of Postfix on either side is in tests/integration."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import pytest
import trio
from interop_support import HEADER, message, proxy_config
from postfix_support import free_port, running_postfix

from trio_proxsmtp.testing import open_client, run_proxy
from trio_proxsmtp.testing.certs import TestCertificates

pytestmark = pytest.mark.integration


@pytest.mark.interop("proxy → Postfix", "implicit TLS (smtpd_tls_wrappermode)")
async def test_out_tls_implicit_to_postfix_wrappermode(
    tmp_path: Path, test_certificates: TestCertificates
) -> None:
    # Postfix's unprivileged daemons read the key: a world-readable copy (tmp_path is 0700).
    directory = Path(shutil.copytree(test_certificates.certificate.parent, tmp_path / "pf"))
    for path in (tmp_path, directory, *directory.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    start = functools.partial(
        running_postfix,
        main_cf=[
            f"smtpd_tls_cert_file = {directory / test_certificates.certificate.name}",
            f"smtpd_tls_key_file = {directory / test_certificates.key.name}",
            "smtpd_tls_loglevel = 1",
        ],
        master_cf=[
            f"127.0.0.1:{port} inet n - n - - smtpd",
            "  -o smtpd_tls_wrappermode=yes",
            "  -o smtpd_tls_security_level=encrypt",
        ],
        listens=[port],
    )
    config = proxy_config(
        tmp_path, test_certificates, "OutTLS: implicit", f"OutTLSCAFile: {test_certificates.ca}"
    )
    with start() as postfix:
        async with (
            run_proxy(config, upstream=f"127.0.0.1:{port}") as proxy,
            open_client(proxy.host, proxy.port) as client,
        ):
            replies = await client.send_message("s@example.org", ["r@example.org"], message("w"))
            assert replies[-1].code == 250, replies
        files = await trio.to_thread.run_sync(postfix.wait_for_delivery, 1)
        mail = files[0].read_bytes()
        log = postfix.log()
    assert f"\n{HEADER}\n".encode() in mail
    assert "TLS connection established from" in log, log
