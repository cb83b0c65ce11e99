"""TLS towards the next server (OutTLS): implicit, and STARTTLS under may and encrypt.

The relay runs on memory streams (tests/relay/memory_relay.py) with real TLS from Python's
ssl module over them; the FakeUpstream records how its connection got TLS, its commands
and what it delivered. Timeouts run under the autojump clock.
"""

from __future__ import annotations

import logging
import ssl

import pytest
import trio
from memory_relay import memory_proxied

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.certs import TestCertificates

MESSAGE = b"Subject: tls up\r\n\r\nover TLS to the next server\r\n"


def out_tls(mode: str, certs: TestCertificates, extra: str = "") -> str:
    return f"OutTLS: {mode}\nOutTLSCAFile: {certs.ca}\n{extra}"


def tls_upstream(certs: TestCertificates, **kwargs: object) -> FakeUpstream:
    return FakeUpstream(tls_certificate=certs.certificate, tls_key=certs.key, **kwargs)  # type: ignore[arg-type]


def commands(up: FakeUpstream) -> list[bytes]:
    return [c.split(b" ")[0].upper() for c in up.sessions[0].commands]


# -- OutTLS: implicit ---------------------------------------------------------------------


async def test_implicit_tls_from_the_first_byte_delivers(
    test_certificates: TestCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    up = tls_upstream(test_certificates, implicit_tls=True)
    proxied = memory_proxied(out_tls("implicit", test_certificates), up)
    async with proxied as (_, proxy), proxy.connect() as client:
        assert (await client.greeting()).code == 220
        replies = await client.send_message("s@x", ["r@x"], MESSAGE)
        assert replies[-1].code == 250
    tls = up.sessions[0].tls
    assert tls is not None and tls.how == "implicit"
    assert up.transactions[0].message == MESSAGE and up.transactions[0].tls
    assert "SERVER TLS established" in caplog.text and "(verified)" in caplog.text


async def test_implicit_tls_verification_failure_is_421_and_logged(
    test_certificates: TestCertificates,
    other_certificates: TestCertificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The proxy trusts another CA: the next server's certificate does not verify.
    up = tls_upstream(test_certificates, implicit_tls=True)
    proxied = memory_proxied(out_tls("implicit", other_certificates), up)
    async with proxied as (_, proxy), proxy.connect() as client:
        greeting = await client.greeting()
        assert greeting.code == 421 and greeting.lines[0].startswith("4.7.0")
        assert await client.read_eof() == b""
    assert not up.transactions and up.commands == []
    assert "TLS handshake failed" in caplog.text
    assert "certificate verification failed" in caplog.text


async def test_implicit_tls_handshake_has_a_deadline(
    test_certificates: TestCertificates,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A plain server that says nothing for long: our ClientHello is never answered.
    up = FakeUpstream(delays={"BANNER": 10_000})
    config = out_tls("implicit", test_certificates, "TimeOut: 30\n")
    async with memory_proxied(config, up) as (_, proxy), proxy.connect(timeout=1000) as client:
        start = trio.current_time()
        greeting = await client.greeting()
        assert greeting.code == 421 and "TLS handshake timed out" in greeting.text
        assert 30 <= trio.current_time() - start < 31
    assert "upstream TLS handshake" in caplog.text


# -- OutTLS: may / encrypt (STARTTLS) -------------------------------------------------------


def ehlo_before_and_after_tls(line: bytes, session: object) -> str:
    """An EHLO reply that differs once TLS is on, so the client's reply shows which."""
    if getattr(session, "tls", None) is None:
        return "250-up.example\n250-PIPELINING\n250-STARTTLS\n250 PLAINONLY"
    return "250-up.example\n250-PIPELINING\n250-AUTH PLAIN\n250 AFTERTLS"


@pytest.mark.parametrize("mode", ["may", "encrypt"])
async def test_starttls_upgrade_relays_the_new_ehlo_reply(
    mode: str, test_certificates: TestCertificates
) -> None:
    up = tls_upstream(test_certificates, replies={"EHLO": ehlo_before_and_after_tls})
    proxied = memory_proxied(out_tls(mode, test_certificates), up)
    async with proxied as (_, proxy), proxy.connect() as client:
        ehlo = await client.command("EHLO client.example")
        assert ehlo.code == 250
        assert "AFTERTLS" in ehlo.lines and "AUTH PLAIN" in ehlo.lines
        assert "PLAINONLY" not in ehlo.lines and "STARTTLS" not in ehlo.lines
        assert ehlo.lines[0] == "smtp.passthru"
        replies = await client.send_message("s@x", ["r@x"], MESSAGE)
        assert replies[-1].code == 250
    tls = up.sessions[0].tls
    assert tls is not None and tls.how == "starttls"
    assert tls.server_name is None  # 127.0.0.1: checked against the certificate, no SNI
    assert commands(up)[:4] == [b"EHLO", b"STARTTLS", b"EHLO", b"MAIL"]
    assert up.sessions[0].commands[2] == b"EHLO client.example"
    assert up.transactions[0].tls and up.transactions[0].message == MESSAGE


async def test_starttls_sends_the_configured_server_name_as_sni(
    test_certificates: TestCertificates,
) -> None:
    up = tls_upstream(test_certificates)
    config = out_tls("encrypt", test_certificates, "OutTLSServerName: localhost\n")
    async with memory_proxied(config, up) as (_, proxy), proxy.connect() as client:
        assert (await client.command("EHLO client.example")).code == 250
    tls = up.sessions[0].tls
    assert tls is not None and tls.server_name == "localhost"


async def test_helo_is_upgraded_with_our_ehlo_then_sent_over_tls(
    test_certificates: TestCertificates,
) -> None:
    up = tls_upstream(test_certificates)
    proxied = memory_proxied(out_tls("may", test_certificates), up)
    async with proxied as (_, proxy), proxy.connect() as client:
        helo = await client.command("HELO client.example")
        assert helo.code == 250 and helo.lines == ("smtp.passthru",)
    assert up.sessions[0].commands[:3] == [
        b"EHLO client.example",
        b"STARTTLS",
        b"HELO client.example",
    ]
    assert up.sessions[0].tls is not None


async def test_may_without_starttls_relays_the_first_reply_in_plain_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    up = FakeUpstream(ehlo_keywords=["PIPELINING", "8BITMIME"])
    proxied = memory_proxied("OutTLS: may\nOutTLSVerify: off\n", up)
    async with proxied as (_, proxy), proxy.connect() as client:
        ehlo = await client.command("EHLO client.example")
        assert ehlo.code == 250 and "8BITMIME" in ehlo.lines
        replies = await client.send_message("s@x", ["r@x"], MESSAGE)
        assert replies[-1].code == 250
    assert commands(up)[:2] == [b"EHLO", b"MAIL"]  # one EHLO: its reply was the client's
    assert up.sessions[0].tls is None and not up.transactions[0].tls
    assert "doesn't offer STARTTLS" in caplog.text


async def test_may_with_starttls_refused_goes_on_in_plain_text(
    test_certificates: TestCertificates,
) -> None:
    up = tls_upstream(test_certificates, replies={"STARTTLS": "454 4.7.0 TLS not available"})
    proxied = memory_proxied(out_tls("may", test_certificates), up)
    async with proxied as (_, proxy), proxy.connect() as client:
        ehlo = await client.command("EHLO client.example")
        assert ehlo.code == 250 and "8BITMIME" in ehlo.lines
        assert (await client.send_message("s@x", ["r@x"], MESSAGE))[-1].code == 250
    assert commands(up)[:3] == [b"EHLO", b"STARTTLS", b"MAIL"]
    assert up.sessions[0].tls is None


@pytest.mark.parametrize(
    ("keywords", "replies", "why"),
    [
        (["PIPELINING"], {}, "doesn't offer STARTTLS"),
        (None, {"STARTTLS": "454 4.7.0 TLS not available"}, "refused STARTTLS"),
        (None, {"EHLO": "502 5.5.2 no ESMTP here"}, "refused EHLO"),
    ],
)
async def test_encrypt_without_tls_is_421_and_no_mail_goes_upstream(
    keywords: list[str] | None,
    replies: dict[str, str],
    why: str,
    test_certificates: TestCertificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    up = tls_upstream(test_certificates, ehlo_keywords=keywords, replies=replies)
    proxied = memory_proxied(out_tls("encrypt", test_certificates), up)
    async with proxied as (_, proxy), proxy.connect() as client:
        reply = await client.command("EHLO client.example")
        assert reply.code == 421 and reply.lines[0].startswith("4.7.0")
        assert await client.read_eof() == b""
    assert b"MAIL" not in commands(up)
    assert why in caplog.text and "OutTLS: encrypt" in caplog.text


async def test_encrypt_refuses_commands_before_the_upgrade(
    test_certificates: TestCertificates,
) -> None:
    up = tls_upstream(test_certificates)
    proxied = memory_proxied(out_tls("encrypt", test_certificates), up)
    async with proxied as (_, proxy), proxy.connect() as client:
        reply = await client.command("MAIL FROM:<secret@example.org>")
        assert reply.code == 503
        assert (await client.command("NOOP")).code == 250  # harmless: forwarded
    assert b"MAIL" not in commands(up)


async def test_encrypt_verification_failure_is_421_and_logged(
    test_certificates: TestCertificates,
    other_certificates: TestCertificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    up = tls_upstream(test_certificates)
    proxied = memory_proxied(out_tls("encrypt", other_certificates), up)
    async with proxied as (_, proxy), proxy.connect() as client:
        reply = await client.command("EHLO client.example")
        assert reply.code == 421 and reply.lines[0].startswith("4.7.0")
    assert commands(up) == [b"EHLO", b"STARTTLS"]
    assert "certificate verification failed" in caplog.text


async def test_starttls_handshake_has_a_deadline(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    test_certificates: TestCertificates,
) -> None:
    # It says 220 to STARTTLS, then never answers the handshake.
    up = FakeUpstream(
        replies={"STARTTLS": "220 go ahead"},
        delay=10_000,  # the ClientHello, taken for a command, is never answered
        delays={"BANNER": 0, "EHLO": 0, "STARTTLS": 0},
    )
    config = out_tls("may", test_certificates, "TimeOut: 30\n")
    async with memory_proxied(config, up) as (_, proxy), proxy.connect(timeout=1000) as client:
        start = trio.current_time()
        reply = await client.command("EHLO client.example")
        assert reply.code == 421 and "TLS handshake timed out" in reply.text
        assert 30 <= trio.current_time() - start < 31
    assert "upstream TLS handshake" in caplog.text


async def test_xclient_goes_after_the_upgrade(test_certificates: TestCertificates) -> None:
    up = tls_upstream(test_certificates)
    config = out_tls("encrypt", test_certificates, "XClient: on\n")
    async with memory_proxied(config, up) as (_, proxy), proxy.connect() as client:
        assert (await client.command("EHLO client.example")).code == 250
        assert (await client.send_message("s@x", ["r@x"], MESSAGE))[-1].code == 250
    assert commands(up)[:6] == [b"EHLO", b"STARTTLS", b"EHLO", b"XCLIENT", b"EHLO", b"MAIL"]


# -- AUTH from a TLS client --------------------------------------------------------------


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def test_auth_from_a_tls_client_never_crosses_a_plain_upstream(
    test_certificates: TestCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    up = FakeUpstream()
    config = f"TLSCertificate: {test_certificates.certificate}\nTLSKey: {test_certificates.key}\n"
    async with memory_proxied(config, up) as (_, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        assert (await client.starttls(client_context())).code == 220
        await client.command("EHLO client.example")
        reply = await client.command("AUTH PLAIN AHVzZXIAc2VjcmV0")
        assert reply.code == 538 and reply.lines[0].startswith("5.7.11")
    assert b"AUTH" not in commands(up)
    assert "refused AUTH" in caplog.text


async def test_auth_from_a_tls_client_goes_over_a_tls_upstream(
    test_certificates: TestCertificates,
) -> None:
    up = tls_upstream(test_certificates)
    config = out_tls(
        "encrypt",
        test_certificates,
        f"TLSCertificate: {test_certificates.certificate}\nTLSKey: {test_certificates.key}\n",
    )
    async with memory_proxied(config, up) as (_, proxy), proxy.connect() as client:
        assert (await client.starttls(client_context())).code == 220
        await client.command("EHLO client.example")
        assert (await client.command("AUTH PLAIN AHVzZXIAc2VjcmV0")).code == 235
    assert b"AUTH" in commands(up)
    assert up.sessions[0].tls is not None


async def test_auth_from_a_plain_client_is_forwarded_as_before() -> None:
    async with memory_proxied() as (up, proxy), proxy.connect() as client:
        await client.command("EHLO client.example")
        assert (await client.command("AUTH PLAIN AHVzZXIAc2VjcmV0")).code == 235
    assert b"AUTH" in commands(up)
