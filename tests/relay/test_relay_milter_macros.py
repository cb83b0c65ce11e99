"""The milter macros Postfix sends that the proxy knows (docs/behaviour.md §6.6, issue 23):
the client's verified name and real port, our addresses, the client side's TLS, and the
message id at the end of the message. Real loopback sockets, FakeMilter recording them."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import trio

from trio_proxsmtp.relay.client_info import client_host_name
from trio_proxsmtp.stages.milter.macros import certificate_name, client_name_macro
from trio_proxsmtp.testing import FakeClient, FakeUpstream, run_proxy
from trio_proxsmtp.testing.fake_milter import FakeMilter

MESSAGE = b"From: s@x\r\nSubject: t\r\n\r\nbody\r\n"


def local_port(client: FakeClient) -> int:
    stream = client.stream
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    port = stream.socket.getsockname()[1]
    assert isinstance(port, int)
    return port


async def test_connection_macros_and_the_message_id_at_end_of_message() -> None:
    milter = FakeMilter()
    with trio.fail_after(30):
        async with (
            milter.serving() as address,
            FakeUpstream() as up,
            run_proxy(f"Milters: {address}\n", upstream=up) as proxy,
            proxy.connect() as client,
        ):
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c")
            assert replies[-1].code == 250
            port = local_port(client)
            await client.quit()
    expected_name = client_name_macro(await client_host_name("127.0.0.1"), unix=False)
    session = milter.sessions[0]
    connect = session.macros_at("connect")
    assert connect["{client_addr}"] == "127.0.0.1"
    assert connect["{client_port}"] == str(port)  # the real one, not 0
    assert connect["{client_name}"] == expected_name
    assert connect["{daemon_addr}"] == connect["{if_addr}"] == "127.0.0.1"
    assert connect["{daemon_port}"] == str(proxy.port)
    assert connect["{daemon_name}"] and connect["j"] == socket.gethostname()
    assert session.of("connect")[0].port == port
    assert session.of("connect")[0].args[0] == expected_name
    assert "{tls_version}" not in session.macros  # plain text
    eom = session.macros_at("eom")
    assert eom["i"] and eom["i"] == session.macros_at("mail")["i"]


async def test_tls_macros_at_helo(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    milter = FakeMilter()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    config = f"TLSCertificate: {cert}\nTLSKey: {key}\n"
    with trio.fail_after(30):
        async with (
            milter.serving() as address,
            FakeUpstream() as up,
            run_proxy(f"Milters: {address}\n{config}", upstream=up) as proxy,
            proxy.connect() as client,
        ):
            await client.greeting()
            await client.command("EHLO c")
            assert (await client.starttls(context)).code == 220
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c")
            assert replies[-1].code == 250
            assert isinstance(client.stream, trio.SSLStream)
            cipher = client.stream.cipher()
            assert cipher is not None
            await client.quit()
    helo = milter.sessions[0].macros_at("helo")
    assert helo["{tls_version}"] == "TLSv1.3"
    assert (helo["{cipher}"], helo["{cipher_bits}"]) == (cipher[0], str(cipher[2]))
    # No client certificate was asked for: none can be named.
    assert "{cert_subject}" not in helo and "{cert_issuer}" not in helo


def test_certificate_names_and_client_names() -> None:
    subject = ((("countryName", "DE"),), (("commonName", "client.example"),))
    assert certificate_name(subject) == "client.example"
    assert certificate_name(((("organizationName", "x"),),)) == ""
    assert certificate_name(None) == ""
    assert client_name_macro("mx.example", unix=False) == "mx.example"
    assert client_name_macro("[UNAVAILABLE]", unix=False) == "unknown"
    assert client_name_macro("[TEMPUNAVAIL]", unix=False) == "unknown"
    assert client_name_macro(None, unix=True) == "localhost"
