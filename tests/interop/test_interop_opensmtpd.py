"""OpenSMTPD 6.8 on either side of the proxy: as its next server (plain, 8BITMIME, SIZE,
refusals at RCPT and at the final dot) and as its client (plain and STARTTLS, and what it
does with the filter's 5xx and 4xx: a bounce, and a message kept on its queue), one
OpenSMTPD per test (its queue directory is compiled in: see mta_support.py)."""

from __future__ import annotations

import logging
import re
import smtplib
from pathlib import Path

import pytest
import trio
from interop_support import HEADER, message, proxy_config
from mta_support import free_port
from opensmtpd_support import OpenSMTPD, running_opensmtpd

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.testing import FakeUpstream, Transaction, open_client, run_proxy
from trio_proxsmtp.testing.certs import TestCertificates

pytestmark = pytest.mark.integration
TO_SMTPD = "proxy → OpenSMTPD"
FROM_SMTPD = "OpenSMTPD → proxy"


async def transaction_with(up: FakeUpstream, marker: bytes, timeout: float = 15) -> Transaction:
    with trio.move_on_after(timeout):
        while True:
            for done in up.transactions:
                if marker in done.message:
                    return done
            await trio.sleep(0.05)
    raise AssertionError(f"no message with {marker!r} reached the sink: {up.transactions}")


async def wait_log(smtpd: OpenSMTPD, pattern: str, timeout: float = 15) -> re.Match[str]:
    with trio.move_on_after(timeout):
        while (found := re.search(pattern, smtpd.log_text(), re.MULTILINE)) is None:
            await trio.sleep(0.05)
        return found
    raise AssertionError(f"{pattern!r} not in OpenSMTPD's log:\n{smtpd.log_text()}")


async def submit(smtpd: OpenSMTPD, sender: str, rcpt: str, msg: bytes) -> None:
    """Hand a message to OpenSMTPD's submission listener (in a thread: the proxy it relays
    to runs in this test's event loop)."""

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", smtpd.submission_port, timeout=15) as client:
            client.sendmail(sender, [rcpt], msg)

    await trio.to_thread.run_sync(send)


# -- OpenSMTPD as the next server ----------------------------------------------------------


@pytest.mark.interop(TO_SMTPD, "plain")
@pytest.mark.interop(TO_SMTPD, "8BITMIME")
@pytest.mark.interop(TO_SMTPD, "SIZE")
@pytest.mark.interop(TO_SMTPD, "refused at RCPT")
@pytest.mark.interop(TO_SMTPD, "refused at the final dot")
async def test_opensmtpd_next_server(tmp_path: Path, test_certificates: TestCertificates) -> None:
    body = "8-bit: naïve café\n"
    config = proxy_config(tmp_path, test_certificates)
    async with FakeUpstream() as sink:
        with running_opensmtpd(test_certificates, sink_port=sink.port) as smtpd:
            async with (
                run_proxy(config, upstream=f"127.0.0.1:{smtpd.port}") as proxy,
                open_client(proxy.host, proxy.port) as client,
            ):
                replies = await client.send_message(
                    "a@x.test",
                    ["b@next.test", "refuse-rcpt@next.test"],
                    message("to opensmtpd", body=body),
                    mail_parameters=["BODY=8BITMIME", "SIZE=300"],
                )
                assert [r.code for r in replies] == [250, 250, 550, 354, 250], replies
                assert replies[2].lines[-1].endswith("refused at RCPT by opensmtpd")
                replies = await client.send_message(
                    "refuse-dot@opensmtpd.test", ["c@next.test"], message("refused")
                )
                assert replies[-1].code == 550, replies
                assert replies[-1].lines[-1].endswith("refused at the final dot by opensmtpd")
                assert (await client.command("NOOP")).code == 250
            relayed = await transaction_with(sink, b"Subject: to opensmtpd")
    assert relayed.rcpt_to == ["b@next.test"]
    assert f"\r\n{HEADER}\r\n".encode() in relayed.message
    assert body.replace("\n", "\r\n").encode() in relayed.message
    assert not any(b"refused" in t.message for t in sink.transactions)


# -- OpenSMTPD as the client ----------------------------------------------------------------


@pytest.mark.interop(FROM_SMTPD, "plain")
@pytest.mark.interop(FROM_SMTPD, "filter rejection → bounce")
@pytest.mark.interop(FROM_SMTPD, "filter temp failure → queued")
async def test_opensmtpd_client_plain_bounce_and_queue(
    tmp_path: Path, test_certificates: TestCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    config = proxy_config(tmp_path, test_certificates)  # PIPELINING and CHUNKING offered
    async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
        url = f"smtp+notls://127.0.0.1:{proxy.port}"
        with running_opensmtpd(test_certificates, sink_port=up.port, proxy_url=url) as smtpd:
            await submit(smtpd, "s@opensmtpd.test", "ok@proxy.test", message("through"))
            passed = await transaction_with(up, b"Subject: through")
            assert passed.rcpt_to == ["ok@proxy.test"]
            assert f"\r\n{HEADER}\r\n".encode() in passed.message

            await submit(
                smtpd, "s@opensmtpd.test", "no@proxy.test", message("r", "X-Interop: reject")
            )
            await wait_log(
                smtpd, r"to=<no@proxy\.test> .*result=\"PermFail\".*rejected by the interop"
            )
            # The bounce goes to the sender, through the "onward" relay: the same sink.
            bounce = await transaction_with(up, b"rejected by the interop filter")
            assert bounce.mail_from == "" and bounce.rcpt_to == ["s@opensmtpd.test"]

            msg = message("t", "X-Interop: tempfail")
            await submit(smtpd, "s@opensmtpd.test", "later@proxy.test", msg)
            await wait_log(smtpd, r"to=<later@proxy\.test> .*result=\"TempFail\".*deferred by the")
            queue = smtpd.smtpctl("show", "queue")
            assert "later@proxy.test" in queue, queue
    assert not any(b"X-Interop: tempfail" in t.message for t in up.transactions)
    # What the matrix says OpenSMTPD does not speak: it sent DATA, never BDAT, and one
    # command at a time (the proxy passed on no MAIL+RCPT group).
    assert "CLIENT < DATA" in caplog.text and "CLIENT < BDAT" not in caplog.text
    assert all(len(group) == 1 for s in up.sessions for group in s.reply_groups)


@pytest.mark.interop(FROM_SMTPD, "STARTTLS")
async def test_opensmtpd_client_starttls(
    tmp_path: Path, test_certificates: TestCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    config = proxy_config(tmp_path, test_certificates)
    async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
        url = f"smtp+tls://127.0.0.1:{proxy.port}"
        with running_opensmtpd(
            test_certificates, sink_port=up.port, proxy_url=url, proxy_tls=" tls no-verify"
        ) as smtpd:
            await submit(smtpd, "s@opensmtpd.test", "tls@proxy.test", message("tls"))
            await transaction_with(up, b"Subject: tls")
    assert "TLS established: TLSv1.3" in caplog.text


@pytest.mark.interop(FROM_SMTPD, "next server refuses at RCPT → bounce")
@pytest.mark.interop(FROM_SMTPD, "next server refuses at the dot → bounce")
async def test_opensmtpd_through_the_proxy_to_opensmtpd(
    tmp_path: Path, test_certificates: TestCertificates
) -> None:
    """OpenSMTPD → proxy → the same OpenSMTPD's receiving port, which refuses."""
    config = proxy_config(tmp_path, test_certificates)
    async with FakeUpstream() as sink:
        # The proxy's port must be in OpenSMTPD's config, OpenSMTPD's port in the proxy's:
        # the proxy goes to a port reserved first, where OpenSMTPD then listens.
        smtpd_port = free_port()
        async with run_proxy(config, upstream=f"127.0.0.1:{smtpd_port}") as proxy:
            url = f"smtp+notls://127.0.0.1:{proxy.port}"
            with running_opensmtpd(
                test_certificates, sink_port=sink.port, proxy_url=url, port=smtpd_port
            ) as smtpd:
                await submit(smtpd, "s@opensmtpd.test", "refuse-rcpt@proxy.test", message("r"))
                await wait_log(smtpd, r"to=<refuse-rcpt@proxy\.test> .*refused at RCPT")
                await submit(smtpd, "refuse-dot@opensmtpd.test", "d@proxy.test", message("d"))
                await wait_log(smtpd, r"to=<d@proxy\.test> .*refused at the final dot")
                await transaction_with(sink, b"refused at RCPT by opensmtpd")
                await transaction_with(sink, b"refused at the final dot by opensmtpd")
