"""OpenDKIM through our milter client: it signs what we send, and checks what we verify."""

from __future__ import annotations

import dkim
from milter_support import OpenDKIM

from trio_proxsmtp.config.options import parse_milter_address
from trio_proxsmtp.protocol.message.edit import MilterEnvelope, Recipient
from trio_proxsmtp.protocol.milter.messages import MilterVerdictKind
from trio_proxsmtp.stages.milter.decisions import MilterContext
from trio_proxsmtp.stages.milter.milters import Milters
from trio_proxsmtp.stages.settings import MilterSettings

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: signed by the proxy\r\n"
    b"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"\r\n"
    b"this line is long enough to matter " + b"x" * 200 + b"\r\n"
    b".leading dot, already unstuffed\r\n"
)
ENVELOPE = MilterEnvelope("alice@example.test", (Recipient("bob@example.org"),))


def settings(address: str) -> MilterSettings:
    return MilterSettings(milters=(parse_milter_address(address),))


async def run_through(address: str, client_ip: str, message: bytes) -> bytes:
    async with Milters(settings(address)) as milters:
        assert (await milters.connect(MilterContext(client_ip, 40000, "client.test"))).proceed
        assert (await milters.helo("client.test")).proceed
        assert (await milters.mail("<alice@example.test>", queue_id="Q1")).proceed
        assert (await milters.rcpt("<bob@example.org>")).proceed
        assert (await milters.data()).proceed
        result = await milters.message(lambda: [message], ENVELOPE)
    assert result.decision.kind is MilterVerdictKind.CONTINUE, result.decision
    assert result.envelope == ENVELOPE
    return b"".join(result.message.chunks())


def dns_for(server: OpenDKIM):  # type: ignore[no-untyped-def]
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{server.selector}._domainkey.{server.domain}.".encode()
        return server.txt_record

    return dnsfunc


async def test_opendkim_signs_and_the_signature_verifies(opendkim: OpenDKIM) -> None:
    signed = await run_through(opendkim.address, "127.0.0.1", MESSAGE)
    assert signed.startswith(b"DKIM-Signature: ")  # OpenDKIM inserts it on top
    assert signed.endswith(MESSAGE)
    assert dkim.verify(signed, dnsfunc=dns_for(opendkim))


async def test_opendkim_signature_breaks_when_body_changes(opendkim: OpenDKIM) -> None:
    signed = await run_through(opendkim.address, "127.0.0.1", MESSAGE)
    assert not dkim.verify(signed.replace(b"Hello Bob", b"Hello Eve"), dnsfunc=dns_for(opendkim))


async def test_opendkim_verifies_and_reports_a_tampered_message(opendkim: OpenDKIM) -> None:
    key = opendkim.private_key.read_bytes()
    signature = dkim.sign(
        MESSAGE,
        opendkim.selector.encode(),
        opendkim.domain.encode(),
        key,
        include_headers=[b"From", b"To", b"Subject"],
    )
    good = signature + MESSAGE
    assert dkim.verify(good, dnsfunc=dns_for(opendkim))
    checked = await run_through(opendkim.address, "192.0.2.10", good)
    assert b"Authentication-Results: test.proxy;" in checked
    assert b"dkim=pass" in checked

    tampered = good.replace(b"Hello Bob", b"Hello Eve")
    checked = await run_through(opendkim.address, "192.0.2.10", tampered)
    header = checked.split(b"\r\n\r\n", 1)[0]
    assert b"Authentication-Results: test.proxy;" in header
    assert b"dkim=fail" in header
