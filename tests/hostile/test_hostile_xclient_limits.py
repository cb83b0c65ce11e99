"""Issue 21, case 4: XCLIENT failed open.  With `XClient: on`, a client's 300-byte EHLO
name went upstream as `XCLIENT ... HELO=<300 bytes>`, which Postfix refuses (`501 5.5.4
Bad HELO syntax`, over 255 bytes); the proxy logged a warning and relayed the message as
its own, so the next server applied its policy to the proxy's address.  A 4,000-byte name
also broke the next server's line limit.

Now a value the next server must refuse goes as [UNAVAILABLE], the line stays within 512
bytes, and a refusal of the XCLIENT the next server advertised ends the connection with
421 4.7.0: nothing goes as the proxy's own (docs/behaviour.md §4.5).
"""

from __future__ import annotations

import logging

import pytest
import trio
from hostile_support import MESSAGE, proxied

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.protocol.smtp.commands import xtext_decode
from trio_proxsmtp.testing import FakeUpstream, Session

XCLIENT_REFUSED = b"421 4.7.0 smtp.passthru Error: the next server refused XCLIENT\r\n"


def postfix_xclient(line: bytes, session: Session) -> str | None:
    """XCLIENT as Postfix's smtpd checks it: the line within 512 bytes (RFC 5321), each
    value at most 255 bytes as sent (xtext-encoded: Postfix 3.7's "attribute value too
    long"), HELO= (and NAME=) at most 255 bytes once xtext-decoded; else a 5xx refusal."""
    if len(line) + 2 > 512:
        return "500 5.5.2 Error: line too long"
    if any(len(attribute.partition(b"=")[2]) > 255 for attribute in line.split()[1:]):
        return "501 5.5.4 Error: attribute value too long"
    for attribute in line.split()[1:]:
        name, _, value = attribute.partition(b"=")
        decoded = xtext_decode(value.decode("utf-8", "surrogateescape"))
        if name in (b"HELO", b"NAME") and len(decoded.encode("utf-8", "surrogateescape")) > 255:
            return f"501 5.5.4 Bad {name.decode()} syntax"
    return None  # the fake's own 220 greeting


def xclient_lines(up: FakeUpstream) -> list[bytes]:
    return [c for c in up.commands if c.upper().startswith(b"XCLIENT")]


@pytest.mark.parametrize(
    "helo",
    ["a" * 300, "a" * 4000, "\u00e9" * 100],
    ids=["300-bytes", "4000-bytes", "8-bit-over-the-line-limit"],
)
async def test_a_helo_name_the_next_server_must_refuse_goes_as_unavailable(
    helo: str, caplog: pytest.LogCaptureFixture
) -> None:
    # (100 x "é" is 200 bytes, within 255, but 600 xtext-encoded: the line would pass 512.)
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    up = FakeUpstream(replies={"XCLIENT": postfix_xclient})
    with trio.fail_after(20):
        async with proxied("XClient: on", up) as (_, proxy), proxy.connect() as client:
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo=helo)
            assert [r.code for r in replies] == [250, 250, 354, 250]
            await client.quit()
    [line] = xclient_lines(up)
    assert line.startswith(b"XCLIENT ADDR=127.0.0.1 ")
    assert line.endswith(b" HELO=[UNAVAILABLE]")
    assert len(line) + 2 <= 512
    assert [t.message for t in up.transactions] == [MESSAGE]
    assert "XCLIENT HELO= sent as [UNAVAILABLE]" in caplog.text
    assert "XCLIENT" not in "".join(r.getMessage() for r in caplog.records if r.levelno >= 30)


async def test_a_helo_name_within_the_limits_is_sent_as_it_is() -> None:
    helo = "h" * 255
    up = FakeUpstream(replies={"XCLIENT": postfix_xclient})
    with trio.fail_after(20):
        async with proxied("XClient: on", up) as (_, proxy), proxy.connect() as client:
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo=helo)
            assert replies[-1].code == 250
    [line] = xclient_lines(up)
    assert line.endswith(b" HELO=" + helo.encode())


@pytest.mark.parametrize(
    "refusal", ["501 5.5.4 Bad HELO syntax", "550 5.7.0 insufficient authorization"]
)
async def test_a_refused_advertised_xclient_fails_closed(
    refusal: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    up = FakeUpstream(replies={"XCLIENT": refusal})
    with trio.fail_after(20):
        async with proxied("XClient: on", up) as (_, proxy), proxy.connect() as client:
            assert (await client.command("EHLO c")).code == 250
            await client.send(b"MAIL FROM:<s@x>\r\n")
            assert await client.read_eof() == XCLIENT_REFUSED
        await up.wait_until(lambda: up.active_connections == 0)
    # The client's MAIL never went upstream under the proxy's own address.
    assert [c.split()[0] for c in up.commands] == [b"EHLO", b"XCLIENT"]
    assert up.transactions == []
    assert f"next server refused XCLIENT: {refusal}" in caplog.text


async def test_a_refused_xclient_only_assumed_after_helo_is_a_warning_as_in_1_10(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Not advertised (HELO: assumed, docs/behaviour.md §4.5): a next server without
    # XCLIENT says 502, and the session goes on as 1.10's did.
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    up = FakeUpstream(
        ehlo_keywords=["SIZE 100000"],
        replies={"XCLIENT": "502 5.5.2 Error: command not recognized"},
    )
    with trio.fail_after(20):
        async with proxied("XClient: on", up) as (_, proxy), proxy.connect() as client:
            assert (await client.command("HELO c")).code == 250
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c")
            assert replies[-1].code == 250
    assert [t.message for t in up.transactions] == [MESSAGE]
    assert "server didn't accept XCLIENT" in caplog.text
