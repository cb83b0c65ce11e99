"""STARTTLS towards the client (TLSCertificate/TLSKey), with real TLS from Python's ssl.

The proxy runs in this process (run_proxy); the clients are blocking sockets in a thread.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.testing import FakeUpstream, run_proxy

MESSAGE = b"Subject: tls\r\n\r\nover TLS\r\n"


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test certificate is self-signed
    return context


def tls_config(tls_files: tuple[Path, Path]) -> str:
    cert, key = tls_files
    return f"TLSCertificate: {cert}\nTLSKey: {key}\n"


def read_reply(stream: socket.socket | ssl.SSLSocket) -> bytes:
    """One whole reply (up to a line with a space after the code)."""
    data = b""
    while not any(line[3:4] == b" " for line in data.split(b"\r\n") if len(line) >= 4):
        chunk = stream.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


async def test_smtplib_starttls_delivers_and_the_upstream_never_hears_of_it(
    tls_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)

    def send(port: int) -> tuple[list[bytes], str]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo("client.example")
            before = smtp.esmtp_features.copy()
            smtp.starttls(context=client_context())
            smtp.ehlo("client.example")
            assert "starttls" not in smtp.esmtp_features  # not offered twice
            smtp.sendmail("s@x", ["r@x"], MESSAGE)
            assert smtp.sock is not None
            version = smtp.sock.version()  # type: ignore[attr-defined]
        return sorted(name.encode() for name in before), str(version)

    with trio.fail_after(20):
        async with FakeUpstream() as up, run_proxy(tls_config(tls_files), upstream=up) as proxy:
            features, version = await trio.to_thread.run_sync(send, proxy.port)
    assert b"starttls" in features
    assert version in ("TLSv1.2", "TLSv1.3")
    [t] = up.transactions
    assert t.message == MESSAGE
    ehlos = [c.upper() for c in up.commands if c.upper().startswith(b"EHLO")]
    assert ehlos == [b"EHLO CLIENT.EXAMPLE"] * 2  # before TLS and after it
    assert not any(c.upper().startswith(b"STARTTLS") for c in up.commands)
    assert "TLS established: TLSv1" in caplog.text


async def test_commands_sent_with_starttls_are_discarded_not_run(
    tls_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The STARTTLS command injection attack: plain text after STARTTLS, in the same
    packet, must not become commands of the TLS session."""

    def inject(port: int) -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            read_reply(raw)
            raw.sendall(b"EHLO c\r\n")
            read_reply(raw)
            raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@x>\r\n")
            ready = read_reply(raw)
            with client_context().wrap_socket(raw) as tls:
                tls.sendall(b"EHLO c\r\n")
                ehlo = read_reply(tls)
                tls.sendall(b"QUIT\r\n")
                read_reply(tls)
        return ready, ehlo

    with trio.fail_after(20):
        async with FakeUpstream() as up, run_proxy(tls_config(tls_files), upstream=up) as proxy:
            ready, ehlo = await trio.to_thread.run_sync(inject, proxy.port)
            await up.wait_until(lambda: up.active_connections == 0)
    assert ready == b"220 2.0.0 Ready to start TLS\r\n"
    assert ehlo.startswith(b"250-smtp.passthru\r\n")
    assert not any(c.startswith(b"MAIL") for c in up.commands)
    assert "discarded 24 bytes sent right after STARTTLS" in caplog.text


async def test_a_failed_handshake_ends_the_session_cleanly(
    tls_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)

    def not_tls(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            read_reply(raw)
            raw.sendall(b"EHLO c\r\n")
            read_reply(raw)
            raw.sendall(b"STARTTLS\r\n")
            read_reply(raw)
            raw.sendall(b"this is not a TLS client hello\r\n" * 4)
            rest = b""
            while chunk := raw.recv(4096):
                rest += chunk
            return rest

    with trio.fail_after(20):
        async with FakeUpstream() as up, run_proxy(tls_config(tls_files), upstream=up) as proxy:
            rest = await trio.to_thread.run_sync(not_tls, proxy.port)
            await up.wait_until(lambda: up.active_connections == 0)  # upstream closed too
            assert proxy.leftovers() == []
    assert b"220" not in rest and b"250" not in rest  # nothing in clear after the failure
    assert "TLS handshake failed" in caplog.text
    assert up.transactions == []


def test_the_config_carries_one_context_built_when_it_is_read(
    tls_files: tuple[Path, Path],
) -> None:
    base = "OutAddress: 127.0.0.1:2525\n"
    assert parse_config(base).tls_context is None
    config = parse_config(base + tls_config(tls_files))
    assert isinstance(config.tls_context, ssl.SSLContext)
    assert config.tls_context.minimum_version is ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("stream", ["socket", "trio"])
async def test_client_watches_per_message_under_tls(
    tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    # Under TLS on the socket, the client's departure is peeked at through OpenSSL
    # (departure.py TLSPeek): no watch task for a message without a filter.  Under trio's
    # TLS (on any other stream) it is watched by a task: one for the whole end of a
    # message (our DATA, the replay, the commit), not one each (a task and its nursery
    # cost more than the rest of the message's Python).
    from trio_proxsmtp.relay import client_channel

    if stream == "trio":

        def trios(
            transport: trio.abc.Stream, context: ssl.SSLContext, **kwargs: Any
        ) -> trio.SSLStream[trio.abc.Stream]:
            return trio.SSLStream(transport, context, **kwargs)

        monkeypatch.setattr(client_channel, "tls_stream", trios)
    watches: list[int] = []
    real = client_channel.single_error

    def counting() -> Any:
        watches.append(1)
        return real()

    monkeypatch.setattr(client_channel, "single_error", counting)

    def send(port: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo("client.example")
            smtp.starttls(context=client_context())
            smtp.ehlo("client.example")
            for _ in range(3):
                smtp.sendmail("s@x", ["r@x"], MESSAGE)

    with trio.fail_after(20):
        async with FakeUpstream() as up, run_proxy(tls_config(tls_files), upstream=up) as proxy:
            await trio.to_thread.run_sync(send, proxy.port)
    assert [t.message for t in up.transactions] == [MESSAGE] * 3
    assert len(watches) == (0 if stream == "socket" else 3)
