"""Exim 4.96 on either side of the proxy: as its next server (plain, STARTTLS, TLS on
connect, BDAT, PIPELINING, 8BITMIME, SMTPUTF8, refusals at RCPT and at the final dot) and
as its client (pipelining, CHUNKING, SIZE, STARTTLS verified, and what Exim does with the
filter's 5xx and 4xx: a bounce, and a message kept on its queue and delivered on retry)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
from interop_support import HEADER, message, proxy_config
from mta_support import Exim

from trio_proxsmtp.testing import DEFAULT_EHLO_KEYWORDS, FakeUpstream, open_client, run_proxy
from trio_proxsmtp.testing.certs import TestCertificates

pytestmark = pytest.mark.integration
TO_EXIM = "proxy → Exim"
FROM_EXIM = "Exim → proxy"


async def wait_log(exim: Exim, pattern: str, timeout: float = 15) -> re.Match[str]:
    with trio.move_on_after(timeout):
        while (found := re.search(pattern, exim.mainlog(), re.MULTILINE)) is None:
            await trio.sleep(0.05)
        return found
    raise AssertionError(f"{pattern!r} not in Exim's mainlog:\n{exim.mainlog()}")


async def stored_with(exim: Exim, marker: bytes) -> bytes:
    with trio.move_on_after(15):
        while True:
            for stored in exim.delivered():
                if marker in stored:
                    return stored
            await trio.sleep(0.05)
    raise AssertionError(f"no stored message with {marker!r}:\n{exim.mainlog()}")


def subject(request: pytest.FixtureRequest) -> str:
    return f"interop {request.node.name}"


# -- Exim as the next server --------------------------------------------------------------


@pytest.mark.interop(TO_EXIM, "plain")
@pytest.mark.interop(TO_EXIM, "8BITMIME")
@pytest.mark.interop(TO_EXIM, "SMTPUTF8")
async def test_exim_next_server_plain_8bit_utf8(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates, request: pytest.FixtureRequest
) -> None:
    body = "Grüße, 8-bit body: déjà vu.\n"
    msg = message(subject(request), body=body)
    config = proxy_config(tmp_path, test_certificates, "OutTLS: off")
    async with (
        run_proxy(config, upstream=f"127.0.0.1:{exim.port}") as proxy,
        open_client(proxy.host, proxy.port) as client,
    ):
        replies = await client.send_message(
            "sénder@exim.test",
            ["rcpt@next.test", "ünïcode@next.test"],
            msg,
            mail_parameters=["SMTPUTF8", "BODY=8BITMIME"],
        )
        assert [r.code for r in replies] == [250, 250, 250, 354, 250], replies
        await client.quit()
    stored = await stored_with(exim, subject(request).encode())
    assert f"\n{HEADER}\n".encode() in stored
    assert body.encode() in stored  # 8-bit bytes as sent
    line = await wait_log(exim, r"<= sénder@exim\.test .*P=(\S+)")
    assert line.group(1) == "utf8esmtp", line.group(0)  # SMTPUTF8 reached Exim


def tls_errors(exim: Exim) -> list[str]:
    """Exim's complaints of a TLS session that ended without a close_notify (logged
    before the message's local delivery as a server, before its "=>" line as a client),
    but for the fixture's own check of its TLS port, which closes in the handshake."""
    lines = exim.mainlog().splitlines()
    return [line for line in lines if "non-properly" in line and "gnutls_handshake" not in line]


async def received_over_tls(exim: Exim, pattern: str) -> None:
    """Exim received a message over TLS (its "<=" line matches `pattern`), and the proxy
    ended that TLS session with a close_notify (docs/behaviour.md §11.21)."""
    received = await wait_log(exim, rf"^\S+ \S+ (\S+) {pattern}")  # date, time, id
    await wait_log(exim, rf"{re.escape(received.group(1))} Completed")
    assert tls_errors(exim) == []


@pytest.mark.interop(TO_EXIM, "STARTTLS")
async def test_exim_next_server_starttls(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates, request: pytest.FixtureRequest
) -> None:
    config = proxy_config(
        tmp_path, test_certificates, "OutTLS: encrypt", f"OutTLSCAFile: {test_certificates.ca}"
    )
    async with (
        run_proxy(config, upstream=f"127.0.0.1:{exim.port}") as proxy,
        open_client(proxy.host, proxy.port) as client,
    ):
        replies = await client.send_message("tls@exim.test", ["r@next.test"], message("x"))
        assert replies[-1].code == 250, replies
    await received_over_tls(exim, r"<= tls@exim\.test .*P=esmtps .*X=TLS1\.3")


@pytest.mark.interop(TO_EXIM, "implicit TLS")
async def test_exim_next_server_tls_on_connect(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates
) -> None:
    config = proxy_config(
        tmp_path, test_certificates, "OutTLS: implicit", f"OutTLSCAFile: {test_certificates.ca}"
    )
    async with (
        run_proxy(config, upstream=f"127.0.0.1:{exim.tls_port}") as proxy,
        open_client(proxy.host, proxy.port) as client,
    ):
        replies = await client.send_message("smtps@exim.test", ["r@next.test"], message("x"))
        assert replies[-1].code == 250, replies
    await received_over_tls(exim, r"<= smtps@exim\.test .*P=esmtps .*X=TLS1\.3")


@pytest.mark.interop(TO_EXIM, "BDAT")
async def test_exim_next_server_bdat(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates, request: pytest.FixtureRequest
) -> None:
    msg = message(subject(request), body="chunk one\nchunk two\n.leading dot\n")
    config = proxy_config(tmp_path, test_certificates)
    async with (
        run_proxy(config, upstream=f"127.0.0.1:{exim.port}") as proxy,
        open_client(proxy.host, proxy.port) as client,
    ):
        replies = await client.send_message_bdat(
            "bdat@exim.test", ["r@next.test"], msg, chunk_size=40
        )
        assert [r.code for r in replies][-1] == 250, replies
    stored = await stored_with(exim, subject(request).encode())
    assert b"\n.leading dot\n" in stored  # no stuffing left over
    # Exim logs K on the <= line of a message it received by BDAT (CHUNKING).
    await wait_log(exim, r"<= bdat@exim\.test .* K ")


@pytest.mark.interop(TO_EXIM, "PIPELINING")
async def test_exim_next_server_pipelining(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates
) -> None:
    config = proxy_config(tmp_path, test_certificates)
    async with (
        run_proxy(config, upstream=f"127.0.0.1:{exim.port}") as proxy,
        open_client(proxy.host, proxy.port) as client,
    ):
        replies = await client.send_message(
            "pipe@exim.test", ["r1@next.test", "r2@next.test"], message("p"), pipelined=True
        )
        assert [r.code for r in replies] == [250, 250, 250, 354, 250], replies
    # Exim's log_selector +pipelining: L on the <= line when the client pipelined.
    await wait_log(exim, r"<= pipe@exim\.test .* L\. ")  # "L.-": offered, not used


@pytest.mark.interop(TO_EXIM, "refused at RCPT")
@pytest.mark.interop(TO_EXIM, "refused at the final dot")
async def test_exim_next_server_refusals(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates
) -> None:
    config = proxy_config(tmp_path, test_certificates)
    async with (
        run_proxy(config, upstream=f"127.0.0.1:{exim.port}") as proxy,
        open_client(proxy.host, proxy.port) as client,
    ):
        replies = await client.send_message(
            "refused@exim.test", ["refuse-rcpt@next.test", "ok@next.test"], message("r")
        )
        assert replies[1].code == 550 and "refused at RCPT by exim" in replies[1].lines[-1]
        assert replies[-1].code == 250  # the other recipient still gets it
        replies = await client.send_message(
            "refused@exim.test", ["refuse-dot@next.test"], message("d")
        )
        assert replies[-1].code == 550, replies
        assert replies[-1].lines[-1] == "refused at the final dot by exim"
        assert (await client.command("NOOP")).code == 250  # the session goes on
    await wait_log(exim, r"F=<refused@exim\.test> rejected after DATA")


# -- Exim as the client --------------------------------------------------------------------


async def inject(exim: Exim, proxy_port: int, msg: bytes, *rcpts: str, tls: str = "try") -> None:
    """Exim takes the message locally and delivers it at once (-odf) to the proxy."""
    argv = exim.argv(
        "-odf", "-oi", "-f", "sender@exim.test", *rcpts, proxy_port=proxy_port, proxy_tls=tls
    )
    result = await trio.run_process(argv, stdin=msg, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def message_id(exim: Exim, rcpt: str) -> str:
    for line in exim.mainlog().splitlines():
        if "<= sender@exim.test" in line and line.endswith(f"for {rcpt}"):
            return line.split()[2]
    raise AssertionError(f"no message for {rcpt} in:\n{exim.mainlog()}")


@pytest.mark.interop(FROM_EXIM, "plain")
@pytest.mark.interop(FROM_EXIM, "BDAT")
@pytest.mark.interop(FROM_EXIM, "SIZE")
async def test_exim_client_chunks_and_sizes(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates, request: pytest.FixtureRequest
) -> None:
    msg = message(subject(request), body="x" * 300 + "\n.dot\n")
    config = proxy_config(tmp_path, test_certificates, "MaxMessageSize: 1000000")
    async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
        await inject(exim, proxy.port, msg, "one@proxy.test", "two@proxy.test", tls="no")
    await wait_log(exim, r"=> one@proxy\.test .*C=\"250 ")
    [sent] = up.transactions
    assert sent.rcpt_to == ["one@proxy.test", "two@proxy.test"]
    assert any(p.upper().startswith("SIZE=") for p in sent.mail_parameters), sent
    assert sent.chunks is not None  # BDAT from Exim to the proxy, BDAT on to the next server
    assert f"\r\n{HEADER}\r\n".encode() in sent.message
    assert sent.message.endswith(b"\r\n.dot\r\n")
    # K: Exim sent it by BDAT (CHUNKING) to the proxy.
    await wait_log(exim, r"=> one@proxy\.test .* K C=")


@pytest.mark.interop(FROM_EXIM, "PIPELINING")
@pytest.mark.parametrize("chunking", ["on", "off"])
async def test_exim_client_pipelined_quit_and_half_close_is_delivered(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates, chunking: str
) -> None:
    """Exim pipelines QUIT after its message's end when PIPELINING is offered, then shuts
    its side down (SHUT_WR) and waits for the replies: a half-close, not a departure
    (docs/behaviour.md §11.20).  The message is delivered once, Exim sees the 250."""
    rcpt = f"pipelined-{chunking}@proxy.test"
    config = proxy_config(tmp_path, test_certificates, "Pipelining: on", f"Chunking: {chunking}")
    async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
        await inject(exim, proxy.port, message("q"), rcpt, tls="no")
        await wait_log(exim, rf"=> {re.escape(rcpt)} .*C=\"250 ")
    [sent] = up.transactions
    assert sent.rcpt_to == [rcpt]
    assert (sent.chunks is not None) is (chunking == "on")
    assert message_id(exim, rcpt) not in exim.queue()


@pytest.mark.interop(FROM_EXIM, "8-bit body")
@pytest.mark.interop(FROM_EXIM, "SMTPUTF8")
async def test_exim_client_relays_8bit_and_utf8(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates, request: pytest.FixtureRequest
) -> None:
    """Mail that reached Exim with SMTPUTF8 and BODY=8BITMIME (on its relay port) goes on
    to the proxy with SMTPUTF8 and its 8-bit body intact, and on to the next server.
    (Exim 4.96 does not repeat BODY=8BITMIME here, over BDAT; the proxy passes on what
    it gets.)"""
    body = "8-bit relayed: Grüße\n"
    config = proxy_config(tmp_path, test_certificates)
    # The proxy passes the next server's SMTPUTF8 on; without it, Exim would downconvert
    # the addresses to A-labels (its utf8_downconvert default).
    up = FakeUpstream(ehlo_keywords=[*DEFAULT_EHLO_KEYWORDS, "SMTPUTF8"])
    async with up, run_proxy(config, upstream=up) as proxy:
        exim.relay_through(proxy.port)
        async with open_client("127.0.0.1", exim.relay_port) as client:
            replies = await client.send_message(
                "sénder@exim.test",
                ["ünï@proxy.test"],
                message(subject(request), body=body),
                mail_parameters=["SMTPUTF8", "BODY=8BITMIME"],
            )
            assert replies[-1].code == 250, replies
        await wait_log(exim, r"=> .*ünï@proxy\.test.* C=\"250 ")
    [sent] = up.transactions
    assert sent.mail_from == "sénder@exim.test" and sent.rcpt_to == ["ünï@proxy.test"]
    assert "SMTPUTF8" in sent.mail_parameters, sent
    assert body.replace("\n", "\r\n").encode() in sent.message


@pytest.mark.interop(FROM_EXIM, "STARTTLS")
async def test_exim_client_starttls_verified(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates
) -> None:
    config = proxy_config(tmp_path, test_certificates)
    async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
        await inject(exim, proxy.port, message("tls"), "tls@proxy.test", tls="yes")
    await wait_log(exim, r"=> tls@proxy\.test .*X=TLS1\.3\S* CV=yes")
    assert len(up.transactions) == 1
    assert tls_errors(exim) == []  # the proxy's close_notify (docs/behaviour.md §11.21)


@pytest.mark.interop(FROM_EXIM, "implicit TLS")
async def test_exim_client_tls_on_connect(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates
) -> None:
    config = proxy_config(tmp_path, test_certificates, "ListenTLS: 127.0.0.1:10465")
    async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
        assert proxy.tls_port is not None
        await inject(exim, proxy.tls_port, message("smtps"), "smtps@proxy.test", tls="implicit")
    await wait_log(exim, r"=> smtps@proxy\.test .*T=proxy_smtps .*X=TLS1\.3\S* CV=yes")
    assert len(up.transactions) == 1
    assert tls_errors(exim) == []


@pytest.mark.interop(FROM_EXIM, "filter rejection → bounce")
async def test_exim_client_bounces_a_filter_rejection(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates
) -> None:
    config = proxy_config(tmp_path, test_certificates)
    async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
        await inject(exim, proxy.port, message("r", "X-Interop: reject"), "rej@proxy.test")
    await wait_log(exim, r"\*\* rej@proxy\.test .*550 5\.7\.1 rejected by the interop filter")
    bounce = await stored_with(exim, b"rejected by the interop filter")
    assert b"Envelope-to: sender@exim.test" in bounce
    assert up.transactions == []


@pytest.mark.interop(FROM_EXIM, "filter temp failure → queued, retried")
async def test_exim_client_queues_a_temporary_failure_and_retries(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates
) -> None:
    msg = message("t", "X-Interop: tempfail")
    config = proxy_config(tmp_path, test_certificates)
    async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
        await inject(exim, proxy.port, msg, "later@proxy.test")
        await wait_log(exim, r"== later@proxy\.test .*451 4\.7\.1 deferred by the interop filter")
        assert up.transactions == []
    queued = message_id(exim, "later@proxy.test")
    assert queued in exim.queue()
    # The retry (forced with -M) goes through a proxy without the filter.
    async with FakeUpstream() as up, run_proxy(f"Header: {HEADER}\n", upstream=up) as proxy:
        argv = exim.argv("-M", queued, proxy_port=proxy.port)
        await trio.run_process(argv, capture_stderr=True)
        await wait_log(exim, rf"{queued} => later@proxy\.test")
    assert queued not in exim.queue()
    assert len(up.transactions) == 1 and b"X-Interop: tempfail" in up.transactions[0].message


@pytest.mark.interop(FROM_EXIM, "next server refuses at RCPT → bounce")
@pytest.mark.interop(FROM_EXIM, "next server refuses at the dot → bounce")
@pytest.mark.interop(TO_EXIM, "Exim → proxy → Exim, STARTTLS both hops")
async def test_exim_through_the_proxy_to_exim(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates
) -> None:
    config = proxy_config(
        tmp_path, test_certificates, "OutTLS: encrypt", f"OutTLSCAFile: {test_certificates.ca}"
    )
    async with run_proxy(config, upstream=f"127.0.0.1:{exim.port}") as proxy:
        await inject(exim, proxy.port, message("c"), "chain@proxy.test", tls="yes")
        await inject(exim, proxy.port, message("c"), "refuse-rcpt@proxy.test")
        await inject(exim, proxy.port, message("c"), "refuse-dot@proxy.test")
    await wait_log(exim, r"=> chain@proxy\.test .*CV=yes")
    stored = await stored_with(exim, b"Envelope-to: chain@proxy.test")
    assert f"\n{HEADER}\n".encode() in stored
    await wait_log(exim, r"\*\* refuse-rcpt@proxy\.test .*550 refused at RCPT by exim")
    await wait_log(exim, r"\*\* refuse-dot@proxy\.test .*550 refused at the final dot by exim")
    for refused in ("refuse-rcpt", "refuse-dot"):
        await stored_with(exim, f"{refused}@proxy.test".encode())  # the bounce
