"""8BITMIME and SMTPUTF8 end to end: UTF-8 addresses reach the next server unchanged and the
filter as UTF-8 in SENDER/RECIPIENTS; an 8-bit body arrives byte for byte."""

from __future__ import annotations

import os
import tempfile

from memory_relay import memory_proxied

from trio_proxsmtp.testing import FakeUpstream

KEYWORDS = ["PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "CHUNKING"]
SENDER = "jösé@bücher.example"
RECIPIENTS = ["δοκιμή@παράδειγμα.δοκιμή", "用户@例子.广告"]
BODY = "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\ncafé, naïve, 日本語\r\n".encode() + b"\xff\xfe\r\n"


async def test_utf8_addresses_and_8bit_body_pass_through_to_upstream_and_filter() -> None:
    with tempfile.TemporaryDirectory() as out:
        seen = os.path.join(out, "env")
        config = (
            "FilterType: file\n"
            f'FilterCommand: printf \'%s\\n--\\n%s\\n\' "$SENDER" "$RECIPIENTS" > {seen}\n'
        )
        up = FakeUpstream(ehlo_keywords=KEYWORDS)
        async with memory_proxied(config, up) as (_, proxy), proxy.connect() as client:
            ehlo = await client.command("EHLO client.example")
            assert "SMTPUTF8" in ehlo.lines and "8BITMIME" in ehlo.lines
            replies = await client.send_message(
                SENDER, RECIPIENTS, BODY, mail_parameters=["SMTPUTF8", "BODY=8BITMIME"]
            )
            assert [r.code for r in replies] == [250, 250, 250, 354, 250]
        with open(seen, "rb") as f:
            env = f.read()
    expected = f"{SENDER}\n--\n" + "\n".join(RECIPIENTS) + "\n"
    assert env == expected.encode("utf-8")
    [transaction] = up.transactions
    assert transaction.mail_from == SENDER and transaction.rcpt_to == RECIPIENTS
    assert transaction.mail_parameters == ("SMTPUTF8", "BODY=8BITMIME")
    assert transaction.message == BODY
    assert f"MAIL FROM:<{SENDER}> SMTPUTF8 BODY=8BITMIME".encode() in up.commands


async def test_utf8_message_by_bdat_is_byte_exact() -> None:
    up = FakeUpstream(ehlo_keywords=KEYWORDS)
    async with memory_proxied("Chunking: on\n", up) as (_, proxy), proxy.connect() as client:
        replies = await client.send_message_bdat(
            SENDER, RECIPIENTS[:1], BODY, chunk_size=5, mail_parameters=["SMTPUTF8"]
        )
        assert all(r.code == 250 for r in replies)
    [transaction] = up.transactions
    assert transaction.message == BODY and transaction.mail_from == SENDER
