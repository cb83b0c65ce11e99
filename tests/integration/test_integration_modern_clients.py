"""swaks as the client of the modern paths: implicit TLS (--tlsc) on ListenTLS, STARTTLS
(--tls) with TLS to the next server too, and --pipeline grouped towards the next server."""

from __future__ import annotations

import subprocess

import pytest
import trio
from integration_support import require

from trio_proxsmtp.testing import FakeUpstream, run_proxy
from trio_proxsmtp.testing.certs import TestCertificates

pytestmark = pytest.mark.integration


async def swaks(port: int, *extra: str) -> subprocess.CompletedProcess[bytes]:
    argv = [require("swaks"), "--server", f"127.0.0.1:{port}", "--from", "s@x", "--to", "r@x"]
    argv += ["--helo", "client.example", "--timeout", "10", *extra]
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert b"<** Timeout" not in result.stdout, result.stdout.decode()
    return result


def server_tls(certs: TestCertificates) -> str:
    return f"TLSCertificate: {certs.certificate}\nTLSKey: {certs.key}\n"


async def test_swaks_tlsc_on_listen_tls(test_certificates: TestCertificates) -> None:
    config = server_tls(test_certificates) + "ListenTLS: 127.0.0.1:10465\n"
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
            assert proxy.tls_port is not None
            result = await swaks(proxy.tls_port, "--tlsc", "--body", "implicit")
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert "=== TLS started with cipher TLSv1" in output
    assert "STARTTLS" not in output  # neither offered nor needed
    assert b"\r\n\r\nimplicit\r\n" in up.transactions[0].message


async def test_swaks_tls_with_tls_to_the_next_server(test_certificates: TestCertificates) -> None:
    up = FakeUpstream(tls_certificate=test_certificates.certificate, tls_key=test_certificates.key)
    config = (
        server_tls(test_certificates) + f"OutTLS: encrypt\nOutTLSCAFile: {test_certificates.ca}\n"
    )
    with trio.fail_after(30):
        async with up, run_proxy(config, upstream=up) as proxy:
            result = await swaks(
                proxy.port,
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "u",
                "--auth-password",
                "p",
                "--body",
                "both sides",
            )
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert "235 " in output  # AUTH went over TLS on both hops
    tls = up.sessions[0].tls
    assert tls is not None and tls.how == "starttls"
    assert up.transactions[0].tls and b"both sides" in up.transactions[0].message


async def test_swaks_pipeline_is_grouped_towards_the_next_server() -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy("Pipelining: on\n", upstream=up) as proxy:
            result = await swaks(proxy.port, "--pipeline", "--to", "r1@x,r2@x", "--body", "p")
    output = result.stdout.decode()
    assert result.returncode == 0, output
    assert [b"MAIL FROM:<s@x>", b"RCPT TO:<r1@x>", b"RCPT TO:<r2@x>"] in (
        up.sessions[0].reply_groups
    ), up.sessions[0].reply_groups
