"""rspamd in milter mode through our milter client: GTUBE is rejected with rspamd's reply."""

from __future__ import annotations

from trio_proxsmtp.config.options import parse_milter_address
from trio_proxsmtp.protocol.message.edit import MilterEnvelope, Recipient
from trio_proxsmtp.protocol.milter.messages import MilterVerdictKind
from trio_proxsmtp.stages.milter.decisions import MilterContext
from trio_proxsmtp.stages.milter.milters import Milters
from trio_proxsmtp.stages.settings import MilterSettings

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def message(body: bytes) -> bytes:
    return (
        b"From: a@example.com\r\nTo: b@example.org\r\nSubject: test\r\n"
        b"Message-ID: <1@example.com>\r\n\r\n" + body + b"\r\n"
    )


async def scan(address: str, body: bytes) -> tuple[MilterVerdictKind, str | None]:
    settings = MilterSettings(milters=(parse_milter_address(address),))
    async with Milters(settings) as milters:
        assert (await milters.connect(MilterContext("192.0.2.1", 1234, "client.test"))).proceed
        assert (await milters.helo("client.test")).proceed
        assert (await milters.mail("<a@example.com>", queue_id="Q1")).proceed
        assert (await milters.rcpt("<b@example.org>")).proceed
        assert (await milters.data()).proceed
        envelope = MilterEnvelope("a@example.com", (Recipient("b@example.org"),))
        result = await milters.message(lambda: [message(body)], envelope)
    return result.decision.kind, result.decision.reply


async def test_rspamd_rejects_gtube_with_its_reply(rspamd: str) -> None:
    assert await scan(rspamd, b"Hello,\r\n" + GTUBE) == (
        MilterVerdictKind.REJECT,
        "554 5.7.1 Gtube pattern",
    )


async def test_rspamd_lets_ordinary_mail_through(rspamd: str) -> None:
    kind, _ = await scan(rspamd, b"Hello, see you at lunch.")
    assert kind is MilterVerdictKind.CONTINUE
