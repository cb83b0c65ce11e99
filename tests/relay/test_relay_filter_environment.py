"""The filter's environment beyond 1.10's (docs/behaviour.md §6.1, issue 23): HELO, PROTO,
CLIENT_PORT, TLS, ID and DESTINATION, with real filter processes on loopback."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trio

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.protocol.proxy_header import (
    ProxyCommand,
    ProxyFamily,
    ProxyHeader,
    ProxyTransport,
)
from trio_proxsmtp.protocol.proxy_header_build import encode_v2
from trio_proxsmtp.stages.filter.environment import (
    filter_environment,
    host_port,
    tls_description,
)
from trio_proxsmtp.testing import FakeClient, FakeUpstream, run_proxy

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"
NAMES = ("HELO", "PROTO", "CLIENT_PORT", "TLS", "ID", "DESTINATION")


def dump_config(out: Path) -> str:
    """A filter that writes the new variables (unset ones as "-") and passes the message."""
    fields = " ".join(f'"${{{name}-unset}}"' for name in NAMES)
    return f"FilterCommand: printf '%s|%s|%s|%s|%s|%s' {fields} > {out}; cat\n"


def seen(out: Path) -> dict[str, str]:
    return dict(zip(NAMES, out.read_text().split("|"), strict=True))


def summary_ids(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = (r.getMessage() for r in caplog.records)
    return [line.split(": ", 1)[0] for line in lines if ": client=" in line]


def local_port(client: FakeClient) -> int:
    stream = client.stream
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    assert isinstance(stream, trio.SocketStream)
    port = stream.socket.getsockname()[1]
    assert isinstance(port, int)
    return port


async def test_ehlo_client_port_and_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    out = tmp_path / "vars"
    with trio.fail_after(20):
        async with (
            FakeUpstream() as up,
            run_proxy(dump_config(out), upstream=up) as proxy,
            proxy.connect() as client,
        ):
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c.example")
            assert replies[-1].code == 250
            port = local_port(client)
    variables = seen(out)
    [summary_id] = summary_ids(caplog)
    assert variables == {
        "HELO": "c.example",
        "PROTO": "ESMTP",
        "CLIENT_PORT": str(port),
        "TLS": "",  # set, empty: no TLS
        "ID": summary_id,
        "DESTINATION": "unset",  # not transparent
    }


async def test_helo_is_smtp(tmp_path: Path) -> None:
    out = tmp_path / "vars"
    with trio.fail_after(20):
        async with (
            FakeUpstream() as up,
            run_proxy(dump_config(out), upstream=up) as proxy,
            proxy.connect() as client,
        ):
            await client.greeting()
            assert (await client.command("HELO old.example")).code == 250
            await client.command("MAIL FROM:<s@x>")
            await client.command("RCPT TO:<r@x>")
            await client.command("DATA")
            await client.send(MESSAGE + b".\r\n")
            assert (await client.read_reply()).code == 250
    variables = seen(out)
    assert (variables["HELO"], variables["PROTO"]) == ("old.example", "SMTP")


async def test_tls_after_starttls(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    out = tmp_path / "vars"
    cert, key = tls_files
    config = dump_config(out) + f"TLSCertificate: {cert}\nTLSKey: {key}\n"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    with trio.fail_after(20):
        async with (
            FakeUpstream() as up,
            run_proxy(config, upstream=up) as proxy,
            proxy.connect() as client,
        ):
            await client.greeting()
            await client.command("EHLO before.example")
            assert (await client.starttls(context)).code == 220
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="after.example")
            assert replies[-1].code == 250
            assert isinstance(client.stream, trio.SSLStream)
            cipher = client.stream.cipher()
            assert cipher is not None
    variables = seen(out)
    assert variables["TLS"] == f"TLSv1.3 {cipher[0]}"
    assert variables["HELO"] == "after.example"


async def test_destination_and_port_from_a_proxy_header(tmp_path: Path) -> None:
    out = tmp_path / "vars"
    config = dump_config(out) + "ProxyProtocol: on\nTransparentProxy: on\n"
    with trio.fail_after(20):
        async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
            header = encode_v2(
                ProxyHeader(
                    2, ProxyCommand.PROXY, ProxyFamily.INET, ProxyTransport.STREAM,
                    "203.0.113.7", 40123, "127.0.0.1", up.port,
                )
            )  # fmt: skip
            async with proxy.connect(proxy_header=header) as client:
                replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c")
                assert replies[-1].code == 250
    variables = seen(out)
    assert variables["DESTINATION"] == f"127.0.0.1:{up.port}"
    assert variables["CLIENT_PORT"] == "40123"


def test_values() -> None:
    assert tls_description(None, None) == ""
    assert tls_description("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384") == (
        "TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384"
    )
    assert host_port(None) is None
    assert host_port(("2001:db8::25", 25)) == "[2001:db8::25]:25"
    env = filter_environment(
        client="192.0.2.1", server="s", sender=None, recipients=(), remote=None,
        remote_helo=None, temp_directory="/t", base={},
    )  # fmt: skip
    assert not set(NAMES) & set(env)  # only what is known is set
