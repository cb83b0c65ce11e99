"""REQUIRETLS (RFC 8689) through the relay (issue 23, docs/behaviour.md §11.14): offered to
the client only when its connection is TLS and the next server's is TLS with a verified
certificate (OutTLS: encrypt, OutTLSVerify on by default); otherwise taken out of the EHLO
reply and `MAIL ... REQUIRETLS` refused with 530 5.7.30, never forwarded.  Real TLS over
memory streams (tests/relay/memory_relay.py)."""

from __future__ import annotations

import ssl

import pytest
from memory_relay import memory_proxied

from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.certs import TestCertificates

KEYWORDS = ["PIPELINING", "SIZE 10240000", "STARTTLS", "REQUIRETLS", "8BITMIME"]
MESSAGE = b"Subject: tls all the way\r\n\r\nbody\r\n"


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def config(certs: TestCertificates, out_tls: str) -> str:
    return (
        f"TLSCertificate: {certs.certificate}\nTLSKey: {certs.key}\n"
        f"OutTLSCAFile: {certs.ca}\n{out_tls}"
    )


def upstream(certs: TestCertificates) -> FakeUpstream:
    return FakeUpstream(
        ehlo_keywords=KEYWORDS, tls_certificate=certs.certificate, tls_key=certs.key
    )


async def test_offered_and_forwarded_over_tls_to_a_verified_next_hop(
    test_certificates: TestCertificates,
) -> None:
    up = upstream(test_certificates)
    async with (
        memory_proxied(config(test_certificates, "OutTLS: encrypt\n"), up) as (_, proxy),
        proxy.connect() as client,
    ):
        assert (await client.starttls(client_context())).code == 220
        ehlo = await client.command("EHLO client.example")
        assert "REQUIRETLS" in ehlo.lines
        assert (await client.command("MAIL FROM:<s@x> REQUIRETLS")).code == 250
    assert b"MAIL FROM:<s@x> REQUIRETLS" in up.sessions[0].commands


@pytest.mark.parametrize(
    ("out_tls", "client_tls"),
    [
        ("OutTLS: encrypt\n", False),  # the client's side is plain
        ("OutTLS: may\n", True),  # the next hop is not verified
        ("OutTLS: encrypt\nOutTLSVerify: off\n", True),
        ("", True),  # the next hop is plain
    ],
    ids=["plain-client", "may", "encrypt-unverified", "plain-hop"],
)
async def test_stripped_and_refused_otherwise(
    test_certificates: TestCertificates, out_tls: str, client_tls: bool
) -> None:
    up = upstream(test_certificates)
    async with (
        memory_proxied(config(test_certificates, out_tls), up) as (_, proxy),
        proxy.connect() as client,
    ):
        if client_tls:
            assert (await client.starttls(client_context())).code == 220
        ehlo = await client.command("EHLO client.example")
        assert ehlo.code == 250 and "REQUIRETLS" not in ehlo.lines
        refused = await client.command("MAIL FROM:<s@x> REQUIRETLS")
        assert refused.code == 530 and refused.lines[0].startswith("5.7.30 ")
        assert (await client.command("MAIL FROM:<s@x>")).code == 250
    assert not any(b"REQUIRETLS" in line for line in up.sessions[0].commands)
