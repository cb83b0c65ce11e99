"""ListenTLS: a second listener where clients speak TLS from the first byte (RFC 8314)."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import trio
import trio.testing
from memory_relay import CLIENT

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.settings import relay_settings
from trio_proxsmtp.daemon.reload import applicable_reload
from trio_proxsmtp.relay.connection import Connection
from trio_proxsmtp.testing import FakeUpstream, run_proxy
from trio_proxsmtp.testing.certs import TestCertificates
from trio_proxsmtp.testing.client import open_client

MESSAGE = b"Subject: implicit\r\n\r\nover implicit TLS\r\n"


def listen_tls(certs: TestCertificates) -> str:
    return f"ListenTLS: 127.0.0.1:10465\nTLSCertificate: {certs.certificate}\nTLSKey: {certs.key}\n"


def trusting(certs: TestCertificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certs.ca))


async def test_fake_client_over_implicit_tls_gets_no_starttls(
    test_certificates: TestCertificates,
) -> None:
    with trio.fail_after(30):
        async with (
            FakeUpstream() as up,
            run_proxy(listen_tls(test_certificates), upstream=up) as proxy,
        ):
            assert proxy.tls_port is not None and proxy.tls_port != proxy.port
            async with open_client(
                "127.0.0.1", proxy.tls_port, tls=trusting(test_certificates)
            ) as client:
                assert (await client.greeting()).code == 220
                ehlo = await client.command("EHLO client.example")
                assert "STARTTLS" not in ehlo.lines
                assert (await client.send_message("s@x", ["r@x"], MESSAGE))[-1].code == 250
            # The plain listener is still plain, and offers STARTTLS.
            async with proxy.connect() as client:
                assert "STARTTLS" in (await client.command("EHLO client.example")).lines
    assert up.transactions[0].message == MESSAGE


async def test_smtplib_smtp_ssl_delivers(test_certificates: TestCertificates) -> None:
    def send(port: int) -> dict[str, str]:
        context = trusting(test_certificates)
        with smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=10) as smtp:
            smtp.ehlo("client.example")
            features = dict(smtp.esmtp_features)
            smtp.sendmail("s@x", ["r@x"], MESSAGE)
        return features

    with trio.fail_after(30):
        async with (
            FakeUpstream() as up,
            run_proxy(listen_tls(test_certificates), upstream=up) as proxy,
        ):
            assert proxy.tls_port is not None
            features = await trio.to_thread.run_sync(send, proxy.tls_port)
    assert "starttls" not in features
    assert up.transactions[0].message == MESSAGE


async def test_implicit_tls_handshake_has_a_deadline_before_the_upstream(
    test_certificates: TestCertificates, autojump_clock: trio.testing.MockClock
) -> None:
    config = parse_config(f"OutAddress: 127.0.0.1:25\nTimeOut: 30\n{listen_tls(test_certificates)}")
    assert config.tls_context is not None
    ours, theirs = trio.testing.memory_stream_pair()
    opened: list[bool] = []

    async def open_upstream() -> tuple[trio.abc.Stream, str]:
        opened.append(True)
        raise OSError("never")

    connection = Connection(
        relay_settings(config),
        theirs,
        CLIENT,
        0x100000,
        open_upstream=open_upstream,
        implicit_tls=config.tls_context,
    )
    start = trio.current_time()
    await connection.run()  # the client never starts its handshake
    assert 30 <= trio.current_time() - start < 31
    assert opened == []  # the next server never heard of this client
    await ours.aclose()


async def test_listen_tls_plain_client_gets_nothing(test_certificates: TestCertificates) -> None:
    with trio.fail_after(30):
        async with (
            FakeUpstream() as up,
            run_proxy(listen_tls(test_certificates), upstream=up) as proxy,
        ):
            assert proxy.tls_port is not None
            async with open_client("127.0.0.1", proxy.tls_port, timeout=5) as client:
                await client.send(b"EHLO plain.example\r\n")
                assert await client.read_eof() == b""  # no banner in plain text
    assert up.connections == 0


async def test_listen_tls_on_a_unix_socket(
    test_certificates: TestCertificates, tmp_path: Path
) -> None:
    path = tmp_path / "smtps.sock"
    config = (
        f"ListenTLS: {path}\nTLSCertificate: {test_certificates.certificate}\n"
        f"TLSKey: {test_certificates.key}\n"
    )
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy(config, upstream=up):
            context = trusting(test_certificates)
            async with open_client(path, tls=context, server_hostname="localhost") as client:
                assert (await client.send_message("s@x", ["r@x"], MESSAGE))[-1].code == 250
        assert not path.exists()  # removed at exit, as a Unix Listen socket is
    assert up.transactions[0].message == MESSAGE


def test_a_reload_keeps_the_running_listen_tls(test_certificates: TestCertificates) -> None:
    tls = f"TLSCertificate: {test_certificates.certificate}\nTLSKey: {test_certificates.key}\n"
    running = parse_config(f"OutAddress: 127.0.0.1:25\n{tls}ListenTLS: 127.0.0.1:10465\n")
    new = parse_config(f"OutAddress: 127.0.0.1:25\n{tls}ListenTLS: 127.0.0.1:10466\n")
    config, problems = applicable_reload(running, new, 1)
    assert config is not None and config.listen_tls == running.listen_tls
    assert any("ListenTLS changed" in problem for problem in problems)
    config, problems = applicable_reload(running, parse_config("OutAddress: 127.0.0.1:25\n"), 1)
    assert config is None and any("TLSCertificate" in problem for problem in problems)
