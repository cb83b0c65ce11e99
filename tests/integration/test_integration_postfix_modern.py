"""Modern SMTP through the proxy against a real Postfix smtpd as the next server: STARTTLS
under OutTLS may and encrypt, a verification failure, PIPELINING (one write for the
MAIL+RCPT+RCPT group), BDAT, an SMTPUTF8 address and an 8-bit body.  What Postfix received
is read from the files it delivered and from its maillog, not only from its replies.

A small counting relay sits between the proxy and Postfix where the test needs to see the
proxy's writes: every chunk it reads from the proxy is recorded.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from postfix_support import PostfixSetup, free_port, postfix_starter

from trio_proxsmtp.testing import run_proxy
from trio_proxsmtp.testing.certs import TestCertificates

pytestmark = pytest.mark.integration
__all__ = ["postfix_starter"]  # the fixture, used by name

DEADLINE = 60
BODY = "Subject: modern\r\n\r\ncafé 日本語 über\r\n".encode() + b"8bit \xe9\xff done\r\n"


@pytest.fixture
def postfix_certificates(test_certificates: TestCertificates, tmp_path: Path) -> Path:
    """The server certificate and key where Postfix's daemons may read them."""
    directory = Path(shutil.copytree(test_certificates.certificate.parent, tmp_path / "pf"))
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o644)
    tmp_path.chmod(0o755)
    return directory


async def start_postfix(
    starter: Callable[..., PostfixSetup], certs: TestCertificates, directory: Path
) -> tuple[PostfixSetup, int]:
    port = free_port()
    main_cf = [
        f"smtpd_tls_cert_file = {directory / certs.certificate.name}",
        f"smtpd_tls_key_file = {directory / certs.key.name}",
        "smtpd_tls_security_level = may",
        "smtpd_tls_loglevel = 1",
        "smtputf8_enable = yes",
    ]
    master_cf = [f"127.0.0.1:{port} inet n - n - - smtpd"]
    postfix = await trio.to_thread.run_sync(
        functools.partial(starter, main_cf=main_cf, master_cf=master_cf, listens=[port])
    )
    return postfix, port


async def delivered(postfix: PostfixSetup, count: int) -> list[tuple[str, bytes]]:
    files = await trio.to_thread.run_sync(
        functools.partial(postfix.wait_for_delivery, count, DEADLINE)
    )
    return [(path.name, path.read_bytes()) for path in files]


@asynccontextmanager
async def counting_relay(target: int) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP relay to 127.0.0.1:target; yields its port and the chunks read from clients."""
    chunks: list[bytes] = []

    async def handle(client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", target) as server:

            async def pump(a: trio.SocketStream, b: trio.SocketStream, record: bool) -> None:
                try:
                    while data := await a.receive_some(65536):
                        if record:
                            chunks.append(bytes(data))
                        await b.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, server, True)
                nursery.start_soon(pump, server, client, False)

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
        )
        yield listener.socket.getsockname()[1], chunks
        nursery.cancel_scope.cancel()


def out_tls(mode: str, ca: Path) -> str:
    return f"OutTLS: {mode}\nOutTLSCAFile: {ca}\n"


@pytest.mark.parametrize("mode", ["may", "encrypt"])
async def test_starttls_to_postfix(
    mode: str,
    postfix_starter: Callable[..., PostfixSetup],
    test_certificates: TestCertificates,
    postfix_certificates: Path,
) -> None:
    postfix, port = await start_postfix(postfix_starter, test_certificates, postfix_certificates)
    config = out_tls(mode, test_certificates.ca)
    with trio.fail_after(DEADLINE):
        async with run_proxy(config, upstream=f"127.0.0.1:{port}") as proxy:
            async with proxy.connect() as client:
                ehlo = await client.command("EHLO client.example")
                assert ehlo.code == 250 and "STARTTLS" not in ehlo.lines
                replies = await client.send_message("s@example.org", ["r@example.org"], BODY)
                assert replies[-1].code == 250, replies
            [(name, mail)] = await delivered(postfix, 1)
    assert name.endswith(".r@example.org")
    assert BODY.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n") in mail
    log = postfix.log()
    assert "TLS connection established from" in log, log
    assert "with TLS" in log or "TLSv1" in log


async def test_verification_failure_under_encrypt_sends_nothing(
    postfix_starter: Callable[..., PostfixSetup],
    test_certificates: TestCertificates,
    other_certificates: TestCertificates,
    postfix_certificates: Path,
) -> None:
    postfix, port = await start_postfix(postfix_starter, test_certificates, postfix_certificates)
    config = out_tls("encrypt", other_certificates.ca)  # a CA that did not sign Postfix's
    with trio.fail_after(DEADLINE):
        async with run_proxy(config, upstream=f"127.0.0.1:{port}") as proxy:
            async with proxy.connect() as client:
                reply = await client.command("EHLO client.example")
                assert reply.code == 421 and reply.lines[0].startswith("4.7.0")
            await trio.sleep(0.5)
    assert postfix.delivered() == []
    assert "TLS connection established" not in postfix.log()


async def test_pipelining_to_postfix_is_one_write_per_group(
    postfix_starter: Callable[..., PostfixSetup],
    test_certificates: TestCertificates,
    postfix_certificates: Path,
) -> None:
    postfix, port = await start_postfix(postfix_starter, test_certificates, postfix_certificates)
    with trio.fail_after(DEADLINE):
        async with counting_relay(port) as (relay, chunks):
            upstream = f"127.0.0.1:{relay}"
            async with run_proxy("Pipelining: on\n", upstream=upstream) as proxy:
                async with proxy.connect() as client:
                    await client.command("EHLO client.example")
                    replies = await client.send_message(
                        "s@example.org",
                        ["r1@example.org", "r2@example.org"],
                        BODY,
                        pipelined=True,
                    )
                    assert [r.code for r in replies] == [250, 250, 250, 354, 250]
                await delivered(postfix, 2)
    envelope = [c for c in chunks if b"MAIL FROM" in c or b"RCPT TO" in c]
    assert envelope == [
        b"MAIL FROM:<s@example.org>\r\nRCPT TO:<r1@example.org>\r\nRCPT TO:<r2@example.org>\r\n"
    ], chunks


async def test_bdat_and_smtputf8_relayed_to_postfix(
    postfix_starter: Callable[..., PostfixSetup],
    test_certificates: TestCertificates,
    postfix_certificates: Path,
) -> None:
    postfix, port = await start_postfix(postfix_starter, test_certificates, postfix_certificates)
    recipient = "dörte@exämple.org"
    with trio.fail_after(DEADLINE):
        async with counting_relay(port) as (relay, chunks):
            config = "Chunking: on\nPipelining: on\n"
            async with run_proxy(config, upstream=f"127.0.0.1:{relay}") as proxy:
                async with proxy.connect() as client:
                    ehlo = await client.command("EHLO client.example")
                    assert {"CHUNKING", "SMTPUTF8", "8BITMIME"} <= set(ehlo.lines)
                    replies = await client.send_message_bdat(
                        "jösé@example.org",
                        [recipient],
                        BODY,
                        chunk_size=9,
                        mail_parameters=["SMTPUTF8", "BODY=8BITMIME"],
                    )
                    assert all(r.code == 250 for r in replies), replies
                [(name, mail)] = await delivered(postfix, 1)
    sent = b"".join(chunks)
    assert "MAIL FROM:<jösé@example.org> SMTPUTF8 BODY=8BITMIME".encode() in sent
    assert b"BDAT %d LAST\r\n" % len(BODY) in sent and b"DATA\r\n" not in sent
    assert name.endswith("." + recipient)
    assert BODY.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n") in mail
