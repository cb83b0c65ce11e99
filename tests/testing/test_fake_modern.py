"""The fakes' modern SMTP: TLS (STARTTLS and implicit), PIPELINING round trips, BDAT,
SMTPUTF8 and 8BITMIME -- FakeClient against FakeUpstream, no proxy in between."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from trio_proxsmtp.testing import (
    DEFAULT_EHLO_KEYWORDS,
    ClosePoint,
    FakeClient,
    FakeUpstream,
    TestCertificates,
    open_client,
)

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"
# Everything DATA would have to escape or would rewrite: BDAT carries it as is.
AWKWARD = b"Subject: x\r\n\r\n.\r\n..two\r\nbare\nlf\rcr \xff\xfe\x00 caf\xc3\xa9\r\n.\r\n"
MODERN = (*DEFAULT_EHLO_KEYWORDS, "SMTPUTF8")


def verifying(certs: TestCertificates, client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if client_cert:
        context.load_cert_chain(str(certs.client_certificate), str(certs.client_key))
    return context


def with_tls(certs: TestCertificates, **kwargs: object) -> FakeUpstream:
    return FakeUpstream(tls_certificate=certs.certificate, tls_key=certs.key, **kwargs)  # type: ignore[arg-type]


@asynccontextmanager
async def talk(up: FakeUpstream, **kwargs: object) -> AsyncIterator[FakeClient]:
    with trio.fail_after(20):
        async with up, open_client("127.0.0.1", up.port, **kwargs) as client:  # type: ignore[arg-type]
            yield client


# -- TLS ------------------------------------------------------------------------------------


async def test_starttls_then_a_message(test_certificates: TestCertificates) -> None:
    up = with_tls(test_certificates)
    async with talk(up) as c:
        before = await c.command("EHLO c")
        assert "STARTTLS" in before.lines
        assert (await c.starttls(verifying(test_certificates), "localhost")).code == 220
        after = await c.command("EHLO c")
        assert "STARTTLS" not in after.lines  # not twice
        replies = await c.send_message("s@x", ["r@x"], MESSAGE)
        assert replies[-1].code == 250
        assert (await c.starttls(verifying(test_certificates), "localhost")).code == 554
        await c.quit()
    [session] = up.sessions
    assert session.tls is not None
    assert session.tls.how == "starttls"
    assert session.tls.version in ("TLSv1.2", "TLSv1.3")
    assert session.tls.server_name == "localhost"
    assert session.tls.client_certificate is None
    [t] = up.transactions
    assert t.tls and t.message == MESSAGE
    assert b"STARTTLS" in up.commands


async def test_starttls_without_a_certificate_is_refused() -> None:
    async with talk(FakeUpstream()) as c:
        await c.command("EHLO c")
        assert (await c.command("STARTTLS")).code == 454


async def test_plain_text_after_starttls_is_dropped(test_certificates: TestCertificates) -> None:
    up = with_tls(test_certificates)
    async with talk(up) as c:
        await c.command("EHLO c")
        await c.send(b"STARTTLS\r\nMAIL FROM:<injected@x>\r\n")
        assert (await c.read_reply()).code == 220
        tls = trio.SSLStream(c.stream, verifying(test_certificates), server_hostname="localhost")
        await tls.do_handshake()
        await tls.send_all(b"QUIT\r\n")
        await up.wait_until(lambda: up.sessions[0].closed)
    [session] = up.sessions
    assert session.discarded_after_starttls == b"MAIL FROM:<injected@x>\r\n"
    assert not any(cmd.startswith(b"MAIL") for cmd in up.commands)


async def test_require_tls(test_certificates: TestCertificates) -> None:
    up = with_tls(test_certificates, require_tls=True)
    async with talk(up) as c:
        await c.command("EHLO c")
        assert (await c.command("MAIL FROM:<s@x>")).code == 530
        await c.starttls(verifying(test_certificates), "localhost")
        assert (await c.send_message("s@x", ["r@x"], MESSAGE))[-1].code == 250


async def test_implicit_tls_by_name(test_certificates: TestCertificates) -> None:
    up = with_tls(test_certificates, implicit_tls=True)
    tls = verifying(test_certificates)
    async with talk(up, tls=tls, server_hostname="localhost") as c:
        assert (await c.greeting()).code == 220
        ehlo = await c.command("EHLO c")
        assert "STARTTLS" not in ehlo.lines
        assert (await c.send_message("s@x", ["r@x"], AWKWARD))[-1].code == 250
    [session] = up.sessions
    assert session.tls is not None and session.tls.how == "implicit"
    assert session.tls.server_name == "localhost"
    assert up.transactions[0].tls and up.transactions[0].message == AWKWARD


async def test_implicit_tls_by_ip_sends_no_sni(test_certificates: TestCertificates) -> None:
    up = with_tls(test_certificates, implicit_tls=True)
    async with talk(up, tls=verifying(test_certificates)) as c:  # checks 127.0.0.1
        assert (await c.greeting()).code == 220
        await c.quit()
    assert up.sessions[0].tls is not None
    assert up.sessions[0].tls.server_name is None


async def test_plain_client_on_implicit_tls_fails_the_handshake(
    test_certificates: TestCertificates,
) -> None:
    up = with_tls(test_certificates, implicit_tls=True)
    async with talk(up) as c:
        await c.send(b"EHLO plain\r\n")
        await c.read_eof()
        await up.wait_until(lambda: up.sessions[0].closed)
    [session] = up.sessions
    assert session.tls is None and session.tls_error
    assert session.commands == []


async def test_client_certificate_is_recorded(test_certificates: TestCertificates) -> None:
    up = with_tls(test_certificates, implicit_tls=True, tls_client_ca=test_certificates.ca)
    tls = verifying(test_certificates, client_cert=True)
    async with talk(up, tls=tls, server_hostname="localhost") as c:
        await c.greeting()
        await c.quit()
    info = up.sessions[0].tls
    assert info is not None and info.client_certificate is not None
    assert (("commonName", "client.example"),) in info.client_certificate["subject"]  # type: ignore[operator]


def test_tls_arguments_are_checked(test_certificates: TestCertificates) -> None:
    with pytest.raises(ValueError, match="go together"):
        FakeUpstream(tls_certificate=test_certificates.certificate)
    with pytest.raises(ValueError, match="implicit_tls needs"):
        FakeUpstream(implicit_tls=True)


# -- PIPELINING -----------------------------------------------------------------------------

GROUP = [b"MAIL FROM:<s@x>", b"RCPT TO:<a@x>", b"RCPT TO:<b@x>", b"DATA"]


async def test_a_pipelined_group_is_answered_in_one_write() -> None:
    up = FakeUpstream()
    async with talk(up) as c:
        await c.command("EHLO c")
        replies = await c.pipeline(GROUP)
        assert [r.code for r in replies] == [250, 250, 250, 354]
        await c.send(b"body\r\n.\r\n")
        assert (await c.read_reply()).code == 250
        await c.quit()
    [session] = up.sessions
    assert GROUP in session.reply_groups  # one write: one round trip
    assert session.reply_groups == [[b"EHLO c"], GROUP, [b"."], [b"QUIT"]]
    assert session.writes == 5  # the banner, then one per group


async def test_lock_step_is_one_write_per_command() -> None:
    up = FakeUpstream()
    async with talk(up) as c:
        await c.send_message("s@x", ["a@x", "b@x"], MESSAGE)
    session = up.sessions[0]
    assert session.reply_groups == [[b"EHLO client.example"], *([cmd] for cmd in GROUP), [b"."]]
    assert session.reads >= 6


async def test_without_pipelining_every_reply_is_written_at_once() -> None:
    keywords = [k for k in DEFAULT_EHLO_KEYWORDS if k != "PIPELINING"]
    up = FakeUpstream(ehlo_keywords=keywords)
    async with talk(up) as c:
        await c.command("EHLO c")
        assert [r.code for r in await c.pipeline(GROUP)] == [250, 250, 250, 354]
    assert up.sessions[0].reply_groups[1:] == [[cmd] for cmd in GROUP]


# -- BDAT -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
async def test_bdat_is_byte_exact(chunk_size: int, pipelined: bool) -> None:
    up = FakeUpstream()
    async with talk(up) as c:
        replies = await c.send_message_bdat(
            "s@x", ["r@x"], AWKWARD, chunk_size=chunk_size, pipelined=pipelined
        )
        assert all(r.code == 250 for r in replies)
        assert (await c.command("NOOP")).code == 250  # in step after the chunks
    [t] = up.transactions
    assert t.message == t.data == AWKWARD
    sizes = [len(AWKWARD[i : i + chunk_size]) for i in range(0, len(AWKWARD), chunk_size)]
    assert t.chunks == sizes
    if pipelined:
        assert len(up.sessions[0].reply_groups[1]) == 2 + len(sizes)


async def test_bdat_empty_message_and_data_afterwards() -> None:
    up = FakeUpstream()
    async with talk(up) as c:
        assert [r.code for r in await c.send_message_bdat("s@x", ["r@x"], b"")] == [250] * 3
        assert (await c.send_message("s@x", ["r@x"], MESSAGE))[-1].code == 250
    assert [t.chunks for t in up.transactions] == [[0], None]
    assert up.transactions[0].message == b""


async def test_bdat_refusals_still_read_the_chunk() -> None:
    up = FakeUpstream(size_limit=10)
    async with talk(up) as c:
        await c.command("EHLO c")
        await c.send(b"BDAT 5\r\n12345")
        assert (await c.read_reply()).code == 503  # no MAIL
        await c.send(b"BDAT 3 LAST\r\nxyz")
        assert (await c.read_reply()).code == 503
        replies = await c.send_message_bdat("s@x", ["reject@x"], MESSAGE)
        assert [r.code for r in replies] == [250, 550]  # stops: no recipient
        assert [r.code for r in await c.send_bdat([b"ab", b"cd"])] == [554]
        assert (await c.command("RSET")).code == 250
        replies = await c.send_message_bdat("s@x", ["r@x"], b"x" * 25, chunk_size=10)
        assert [r.code for r in replies] == [250, 250, 250, 250, 552]  # too big, at LAST
        assert (await c.command("NOOP")).code == 250
    assert up.transactions == []


async def test_bdat_syntax_error_closes() -> None:
    up = FakeUpstream()
    async with talk(up) as c:
        await c.command("EHLO c")
        assert (await c.command("BDAT lots")).code == 501
        assert await c.read_eof() == b""


async def test_bdat_unadvertised_is_unknown() -> None:
    keywords = [k for k in DEFAULT_EHLO_KEYWORDS if k != "CHUNKING"]
    async with talk(FakeUpstream(ehlo_keywords=keywords)) as c:
        await c.command("EHLO c")
        assert (await c.command("BDAT 0 LAST")).code == 502


# -- SMTPUTF8 and 8BITMIME ------------------------------------------------------------------


async def test_smtputf8_addresses_and_an_8bit_body() -> None:
    up = FakeUpstream(ehlo_keywords=MODERN)
    body = "Subject: caf\u00e9\r\n\r\n\u00fcber \u2603\r\n".encode()
    async with talk(up) as c:
        replies = await c.send_message(
            "j\u00f6rg@b\u00fccher.example",
            ["\u7528\u6237@\u4f8b\u5b50.example"],
            body,
            mail_parameters=["SMTPUTF8", "BODY=8BITMIME"],
        )
        assert replies[-1].code == 250
    [t] = up.transactions
    assert t.mail_from == "j\u00f6rg@b\u00fccher.example"
    assert t.rcpt_to == ["\u7528\u6237@\u4f8b\u5b50.example"]
    assert t.mail_parameters == ("SMTPUTF8", "BODY=8BITMIME")
    assert t.message == body


async def test_smtputf8_must_be_declared_and_offered() -> None:
    async with talk(FakeUpstream(ehlo_keywords=MODERN)) as c:
        replies = await c.send_message("j\u00f6rg@x", ["r@x"], MESSAGE)
        assert replies[0].code == 553
        replies = await c.send_message("s@x", ["\u00fc@x"], MESSAGE)
        assert [r.code for r in replies] == [250, 553]
    async with talk(FakeUpstream()) as c:  # the defaults do not offer SMTPUTF8
        replies = await c.send_message("s@x", ["r@x"], MESSAGE, mail_parameters=["SMTPUTF8"])
        assert replies[0].code == 555
    keywords = [k for k in DEFAULT_EHLO_KEYWORDS if k != "8BITMIME"]
    async with talk(FakeUpstream(ehlo_keywords=keywords)) as c:
        replies = await c.send_message("s@x", ["r@x"], MESSAGE, mail_parameters=["BODY=8BITMIME"])
        assert replies[0].code == 555


@pytest.mark.parametrize("point", [ClosePoint.ON_DATA, ClosePoint.AFTER_DOT])
async def test_bdat_close_points(point: ClosePoint) -> None:
    up = FakeUpstream(close_at=point)
    async with talk(up) as c:
        await c.command("EHLO c")
        await c.pipeline(["MAIL FROM:<s@x>", "RCPT TO:<r@x>"])
        await c.send(b"BDAT 3\r\nabcBDAT 2 LAST\r\nde")
        replies = []
        with contextlib.suppress(EOFError):
            replies.append(await c.read_reply())
        await c.read_eof()
    assert [r.code for r in replies] == ([] if point is ClosePoint.ON_DATA else [250])
    assert up.transactions == []
