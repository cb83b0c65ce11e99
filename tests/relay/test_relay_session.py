"""The relay's command phase and upstream failures, through the real server (spec §17).

FakeUpstream, run_proxy and FakeClient are all in-process, so tests without a filter
process run under the autojump clock where they wait for timeouts.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.stages.spool import BUFFER_SIZE, Spool
from trio_proxsmtp.testing import (
    CLOSE,
    END_OF_DATA,
    ClosePoint,
    FakeClient,
    FakeUpstream,
    RunningProxy,
    run_proxy,
)

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


def _forward_confirmed_name(address: str) -> bytes:
    """What XCLIENT NAME= must say for this machine's loopback (independent of the relay)."""
    try:
        name = socket.getnameinfo((address, 0), socket.NI_NAMEREQD)[0]
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return b"[UNAVAILABLE]"
    return name.encode() if address in addresses else b"[UNAVAILABLE]"


LOCALHOST_NAME = _forward_confirmed_name("127.0.0.1")


@pytest.fixture(autouse=True)
def _debug_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The summary lines, without the connection id prefix."""
    lines = (r.getMessage().partition(": ")[2] for r in caplog.records)
    return [line for line in lines if line.startswith("client=")]


@asynccontextmanager
async def proxied(
    config: str = "", up: FakeUpstream | None = None
) -> AsyncIterator[tuple[FakeUpstream, RunningProxy]]:
    """An upstream and the proxy in front of it; the temp directory must end empty."""
    async with (
        FakeUpstream() if up is None else up as upstream,
        run_proxy(config, upstream=upstream) as proxy,
    ):
        yield upstream, proxy
        assert proxy.leftovers() == []


@pytest.fixture
def spool_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of every Spool.write from now on."""
    written: list[int] = []
    real_write = Spool.write

    def counting_write(spool: Spool, data: bytes) -> None:
        written.append(len(data))
        real_write(spool, data)

    monkeypatch.setattr(Spool, "write", counting_write)
    return written


async def standard(client: FakeClient) -> list[int]:
    replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c")
    return [r.code for r in replies]


# -- greeting and EHLO ---------------------------------------------------------------------


async def test_t01_banner_rewritten_after_upstream_connected() -> None:
    with trio.fail_after(10):
        async with proxied() as (up, proxy), proxy.connect() as client:
            banner = await client.greeting()
            assert client.received == b"220 smtp.passthru\r\n"
            assert banner.code == 220 and up.connections == 1


async def test_t02_multiline_banner_relayed() -> None:
    with trio.fail_after(10):
        async with (
            proxied(up=FakeUpstream(banner="220-a\n220 b")) as (_, proxy),
            proxy.connect() as client,
        ):
            await client.greeting()
            assert client.received == b"220-a\r\n220 b\r\n"


async def test_t03_refusing_banner_relayed_session_continues() -> None:
    with trio.fail_after(10):
        async with (
            proxied(up=FakeUpstream(banner="554 go away")) as (_, proxy),
            proxy.connect() as client,
        ):
            assert (await client.greeting()).code == 554
            reply = await client.command("HELO c")
            assert reply.code == 250 and reply.lines == ("smtp.passthru",)


async def test_t04_ehlo_rewritten() -> None:
    with trio.fail_after(10):
        async with proxied() as (_, proxy), proxy.connect() as client:
            await client.greeting()
            start = len(client.received)
            await client.command("EHLO c")
            assert bytes(client.received[start:]) == (
                b"250-smtp.passthru\r\n250-SIZE 10240000\r\n250-AUTH PLAIN LOGIN\r\n"
                b"250-XFORWARD NAME ADDR PROTO HELO\r\n250-8BITMIME\r\n250-DSN\r\n"
                b"250 XFILTERED\r\n"
            )


async def test_t05_single_line_ehlo() -> None:
    with trio.fail_after(10):
        async with (
            proxied(up=FakeUpstream(replies={"EHLO": "250 up"})) as (_, proxy),
            proxy.connect() as client,
        ):
            await client.greeting()
            start = len(client.received)
            await client.command("EHLO c")
            assert bytes(client.received[start:]) == b"250 smtp.passthru\r\n"


async def test_t06_helo() -> None:
    with trio.fail_after(10):
        async with proxied() as (up, proxy), proxy.connect() as client:
            await client.greeting()
            start = len(client.received)
            await client.command("HELO c")
            assert bytes(client.received[start:]) == b"250 smtp.passthru\r\n"
            assert up.commands == [b"HELO c"]


async def test_t07_t08_local_refusals_not_forwarded(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with proxied() as (up, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            assert (await client.command("STARTTLS")).code == 502
            # The BDAT chunk is skipped, never read as a command.
            await client.send(b"BDAT 10 LAST\r\nRSET\r\nwxyz")
            reply = await client.read_reply()
            assert reply.code == 502 and reply.lines == ("Command not implemented",)
            reply = await client.command("XCLIENT ADDR=6.6.6.6")
            assert reply.code == 554 and reply.lines == ("Insufficient authorization",)
            assert (await client.command("NOOP")).code == 250
            assert up.commands == [b"EHLO c", b"NOOP"]
    assert "client attempted use of privileged XCLIENT feature" in caplog.text


async def test_t36_line_too_long_not_forwarded() -> None:
    with trio.fail_after(10):
        async with proxied() as (up, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            reply = await client.command(b"NOOP " + b"x" * 4300)
            assert reply.code == 500 and "Line too long" in reply.text
            assert (await client.command("NOOP")).code == 250
            assert up.commands == [b"EHLO c", b"NOOP"]


# -- XCLIENT -------------------------------------------------------------------------------


async def test_t09_xclient_then_ehlo_resent() -> None:
    with trio.fail_after(10):
        async with proxied("XClient: on") as (up, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            reply = await client.command("MAIL FROM:<s@x>")
            assert reply.code == 250 and reply.lines == ("2.1.0 Ok",)
            assert up.commands == [
                b"EHLO c",
                # Every attribute the fake advertises (NAME ADDR PROTO HELO) and we know.
                b"XCLIENT ADDR=127.0.0.1 NAME=" + LOCALHOST_NAME + b" PROTO=ESMTP HELO=c",
                b"EHLO c",
                b"MAIL FROM:<s@x>",
            ]
            # Once per connection.
            await client.command("RSET")
            assert sum(c.startswith(b"XCLIENT") for c in up.commands) == 1


async def test_t10_xclient_after_helo_even_when_not_advertised() -> None:
    up = FakeUpstream(ehlo_keywords=["SIZE 100"])
    with trio.fail_after(10):
        async with proxied("XClient: on", up=up) as (_, proxy), proxy.connect() as client:
            await client.command("HELO c")
            assert (await client.command("MAIL FROM:<s@x>")).code == 250
            assert up.commands[1:3] == [
                b"XCLIENT ADDR=127.0.0.1 NAME=" + LOCALHOST_NAME + b" HELO=c",
                b"HELO c",
            ]


async def test_xclient_not_sent_when_ehlo_does_not_advertise() -> None:
    up = FakeUpstream(ehlo_keywords=["SIZE 100"])
    with trio.fail_after(10):
        async with proxied("XClient: on", up=up) as (_, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            await client.command("NOOP")
            assert up.commands == [b"EHLO c", b"NOOP"]


# -- transactions ----------------------------------------------------------------------------


async def test_t11_no_filter_message_relayed(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with proxied() as (up, proxy), proxy.connect() as client:
            assert await standard(client) == [250, 250, 354, 250]
            assert client.replies[-2].text == "354 Start mail input; end with <CRLF>.<CRLF>"
            await client.quit()
            [t] = up.transactions
            assert (t.mail_from, t.rcpt_to, t.message) == ("s@x", ["r@x"], MESSAGE)
    [summary] = summaries(caplog)
    # Without a filter the message still has a status, and the upstream's address.
    assert summary.startswith("client=127.0.0.1, from=<s@x>, to=<r@x>, status=PASSED, upstream=250")
    assert f", relay={up.address}, size={len(MESSAGE)}, delay=" in summary


async def test_b1_pipelined_envelope_and_body_in_one_write() -> None:
    body = b"Subject: p\r\n\r\nMAIL FROM:<smuggled@evil>\r\n..dot\r\n"
    with trio.fail_after(10):
        async with proxied() as (up, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            await client.send(
                b"MAIL FROM:<s@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<reject@x>\r\n"
                b"RCPT TO:<b@x>\r\nDATA\r\n" + body + b".\r\nQUIT\r\n"
            )
            codes = [(await client.read_reply()).code for _ in range(7)]
            assert codes == [250, 250, 550, 250, 354, 250, 221]
            await client.read_eof()
            [t] = up.transactions
            assert (t.mail_from, t.rcpt_to) == ("s@x", ["a@x", "b@x"])
            assert t.message == body.replace(b"..dot", b".dot")
            assert b"MAIL FROM:<smuggled@evil>" not in up.commands


async def test_pipelining_group_whose_recipients_all_fail_gets_no_354() -> None:
    with trio.fail_after(10):
        async with proxied("Pipelining: on") as (up, proxy), proxy.connect() as client:
            assert "PIPELINING" in (await client.command("EHLO c")).lines
            await client.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<reject@x>\r\nDATA\r\n")
            codes = [(await client.read_reply()).code for _ in range(3)]
            assert codes == [250, 550, 554]  # RFC 2920: DATA refused, no body expected
            await client.send(b"RSET\r\nMAIL FROM:<s@x>\r\nRCPT TO:<r@x>\r\nDATA\r\n")
            codes = [(await client.read_reply()).code for _ in range(4)]
            assert codes == [250, 250, 250, 354]
            await client.send(MESSAGE + b".\r\n")
            assert (await client.read_reply()).code == 250
            [t] = up.transactions
            assert (t.rcpt_to, t.message) == (["r@x"], MESSAGE)
            assert up.commands.count(b"DATA") == 1


async def test_t35_rset_and_two_transactions(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with proxied() as (up, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            await client.command("MAIL FROM:<a@x>")
            await client.command("RCPT TO:<one@x>")
            await client.command("RSET")
            assert (await client.send_message("b@x", ["two@x"], MESSAGE))[-1].code == 250
            assert (await client.send_message("c@x", ["three@x"], MESSAGE))[-1].code == 250
            assert [(t.mail_from, t.rcpt_to) for t in up.transactions] == [
                ("b@x", ["two@x"]),
                ("c@x", ["three@x"]),
            ]
    found = summaries(caplog)
    assert len(found) == 2
    assert "from=<b@x>, to=<two@x>" in found[0] and "from=<c@x>, to=<three@x>" in found[1]


async def test_data_without_accepted_rcpt_refused_locally() -> None:
    with trio.fail_after(10):
        async with proxied() as (up, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            assert (await client.command("DATA")).code == 503
            await client.command("MAIL FROM:<s@x>")
            await client.command("RCPT TO:<reject@x>")
            assert (await client.command("DATA")).code == 554
            assert b"DATA" not in up.commands


async def test_b6_empty_first_message() -> None:
    with trio.fail_after(10):
        async with proxied() as (up, proxy), proxy.connect() as client:
            assert (await client.send_message("s@x", ["r@x"], b""))[-1].code == 250
            [t] = up.transactions
            assert t.message == b""


async def test_size_limit_enforced_after_whole_message(spool_writes: list[int]) -> None:
    written = spool_writes
    up = FakeUpstream(size_limit=100)
    with trio.fail_after(10):
        async with proxied(up=up) as (_, proxy), proxy.connect() as client:
            await client.start_message("s@x", ["r@x"])
            # Well past the limit, in pieces: the spool stops growing at the limit.
            await client.send(b"Subject: big\r\n\r\n")
            for _ in range(50):
                await client.send(b"x" * 1000 + b"\r\n")
            await client.send(b"RSET\r\n.\r\n")
            assert (await client.read_reply()).code == 552
            assert sum(written) < 100 + 1002 + 16
            await up.wait_until(lambda: up.commands[-1] == b"RSET")
            assert up.transactions == [] and b"DATA" not in up.commands
            assert (await client.command("NOOP")).code == 250


async def test_t33_skip_authenticated_streams(caplog: pytest.LogCaptureFixture) -> None:
    config = "Skip: authenticated\nHeader: X-H: y\nFilterType: reject"
    up = FakeUpstream(replies={"DATA": "354 upstream says go"})
    with trio.fail_after(10):
        async with proxied(config, up=up) as (_, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            assert (await client.command("AUTH PLAIN AGFAYg==")).code == 235
            body = b"Subject: s\r\n\r\n.dot\r\n"
            replies = await client.send_message("s@x", ["r@x"], body)
            assert replies[-2].text == "354 upstream says go"
            assert replies[-1].code == 250
            [t] = up.transactions
            assert t.message == body  # no header, no filter
            assert t.data == body.replace(b".dot", b"..dot")
    assert "status=SKIPPED" in summaries(caplog)[0]


async def test_t31_reject_mode(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with proxied("FilterType: reject") as (up, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            for line in ("MAIL FROM:<s@x>", "RCPT TO:<r@x>", "DATA"):
                reply = await client.command(line)
                assert reply.to_bytes() == b"530 Email Rejected\r\n"
            await up.wait_until(lambda: len(up.commands) == 2)
            assert up.commands == [b"EHLO c", b"RSET"]
    assert summaries(caplog)[0].startswith("client=127.0.0.1, status=REJECTED")


async def test_t32_reject_mode_custom_reply() -> None:
    with trio.fail_after(10):
        async with (
            proxied("FilterType: reject\nFilterReject: Go away") as (_, proxy),
            proxy.connect() as client,
        ):
            await client.command("EHLO c")
            reply = await client.command("MAIL FROM:<s@x>")
            assert reply.to_bytes() == b"550 Content Rejected; Go away\r\n"


# -- upstream failures (B13) ----------------------------------------------------------------


async def test_b13_connect_failure_gives_421(caplog: pytest.LogCaptureFixture) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # a closed port: connection refused
    with trio.fail_after(10):
        async with (
            run_proxy("", upstream=f"127.0.0.1:{port}") as proxy,
            proxy.connect() as client,
        ):
            reply = await client.greeting()
            assert reply.code == 421
            await client.read_eof()
    assert "couldn't connect to" in caplog.text and "Connection refused" in caplog.text


async def test_upstream_closes_at_mail_gives_421() -> None:
    up = FakeUpstream(close_at=ClosePoint.ON_MAIL)
    with trio.fail_after(10):
        async with proxied(up=up) as (_, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            reply = await client.command("MAIL FROM:<s@x>")
            assert reply.code == 421
            await client.read_eof()


async def test_upstream_closes_after_dot_gives_421_nothing_claimed() -> None:
    up = FakeUpstream(close_at=ClosePoint.AFTER_DOT)
    with trio.fail_after(10):
        async with proxied(up=up) as (_, proxy), proxy.connect() as client:
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
            assert replies[-1].code == 421
            await client.read_eof()
            assert up.transactions == []


async def test_t40b_upstream_refuses_data(caplog: pytest.LogCaptureFixture) -> None:
    up = FakeUpstream(replies={"DATA": "554 5.5.1 no valid recipients"})
    with trio.fail_after(10):
        async with proxied(up=up) as (_, proxy), proxy.connect() as client:
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
            assert replies[-1].text == "554 5.5.1 no valid recipients"
            await up.wait_until(lambda: up.commands[-1] == b"RSET")
            assert b"." not in up.commands
            assert (await client.command("NOOP")).code == 250
    assert "upstream=554 5.5.1 no valid recipients" in summaries(caplog)[0]


async def test_upstream_rejects_message_logged() -> None:
    up = FakeUpstream(replies={END_OF_DATA: "554 5.7.1 spam"})
    with trio.fail_after(10):
        async with proxied(up=up) as (_, proxy), proxy.connect() as client:
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
            assert replies[-1].text == "554 5.7.1 spam"


async def test_upstream_closes_at_quit_time_client_closed() -> None:
    up = FakeUpstream(replies={"NOOP": CLOSE})
    with trio.fail_after(10):
        async with proxied(up=up) as (_, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            assert (await client.command("NOOP")).code == 421
            await client.read_eof()


# -- limits and timeouts -----------------------------------------------------------------------


async def test_t37_max_connections(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with (
            proxied("MaxConnections: 2") as (up, proxy),
            proxy.connect() as one,
            proxy.connect() as two,
        ):
            await one.greeting()
            await two.greeting()
            async with proxy.connect() as three:
                reply = await three.greeting()
                assert reply.to_bytes() == b"421 Server busy, too many connections\r\n"
                await three.read_eof()
            assert up.connections == 2
            await one.quit()
            await one.read_eof()
            await two.quit()
            await two.read_eof()
            await up.wait_until(lambda: up.active_connections == 0)
            # The slots come back (the server notices the closes asynchronously).
            for _ in range(100):
                async with proxy.connect() as four:
                    if (await four.greeting()).code == 220:
                        break
                await trio.sleep(0.01)
            else:
                raise AssertionError("no slot came back")
    assert "too many connections open (max 2)" in caplog.text


async def test_client_vanishes_in_data_nothing_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(10):
        async with (
            proxied() as (up, proxy),
            proxy.connect() as client,
        ):
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            await client.send(b"Subject: t\r\n\r\npartial")
            await client.aclose()
            await up.wait_until(lambda: up.active_connections == 0)
            assert up.transactions == [] and b"DATA" not in up.commands
    # The message still gets its one summary line, saying why it went nowhere.
    assert summaries(caplog) == [
        "client=127.0.0.1, from=<s@x>, to=<r@x>, status=FILTER-ERROR, reason=client disconnected, "
        "relay=none, delay=0.00, delays=0.00/0.00/0.00"
    ]


async def test_unix_socket_listener_and_upstream(tmp_path: os.PathLike[str]) -> None:
    upstream_path = os.path.join(tmp_path, "up.sock")
    listen_path = os.path.join(tmp_path, "proxy.sock")
    with trio.fail_after(10):
        async with (
            FakeUpstream(unix_path=upstream_path) as up,
            run_proxy(f"Listen: {listen_path}", upstream=up) as proxy,
        ):
            async with proxy.connect() as client:
                assert await standard(client) == [250, 250, 354, 250]
            assert up.transactions[0].message == MESSAGE
            assert proxy.leftovers() == []
    assert os.listdir(tmp_path) == []  # both socket files removed


async def test_unix_listener_socket_file_removed(tmp_path: os.PathLike[str]) -> None:
    listen_path = os.path.join(tmp_path, "proxy.sock")
    with trio.fail_after(10):
        async with FakeUpstream() as up, run_proxy(f"Listen: {listen_path}", upstream=up):
            assert os.path.exists(listen_path)
    assert not os.path.exists(listen_path)


async def _send_and_leave(up: FakeUpstream, proxy: RunningProxy, after_dot: bytes) -> None:
    async with proxy.connect() as client:
        assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
        await client.send(MESSAGE + b".\r\n" + after_dot)
    await up.wait_until(lambda: up.active_connections == 0)


async def test_client_leaving_during_replay_gets_nothing_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # No filter; the upstream is slow to answer our DATA, so the client's close arrives
    # while the message is being replayed: its final "." is never sent.
    with trio.fail_after(30):
        async with proxied("", FakeUpstream(delays={"DATA": 2.0})) as (up, proxy):
            await _send_and_leave(up, proxy, b"")
            assert b"DATA" in up.commands
            assert up.transactions == []
            assert b"Subject: t" not in bytes(up.received)


async def test_client_that_pipelined_quit_and_closed_gets_nothing_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # "... .\r\nQUIT\r\n" then close: its end of stream came before its reply, so it is
    # gone, and would send the message again (issue 21, docs/behaviour.md §5).
    with trio.fail_after(30):
        async with proxied("", FakeUpstream(delays={"DATA": 2.0})) as (up, proxy):
            await _send_and_leave(up, proxy, b"QUIT\r\n")
            assert up.transactions == []
            assert b"Subject: t" not in bytes(up.received)


async def test_protocol_trace_hides_auth_credentials(caplog: pytest.LogCaptureFixture) -> None:
    up = FakeUpstream(replies={"AUTH": "334 VXNlcm5hbWU6"})
    with trio.fail_after(10):
        async with proxied("", up=up) as (_, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            assert (await client.command("AUTH LOGIN dXNlcg==")).code == 334
            # The continuation line is credentials, whatever it looks like.
            await client.command("c2VjcmV0")
            await client.command("QUIT")
    text = "\n".join(r.getMessage() for r in caplog.records)
    for side in ("CLIENT <", "SERVER >"):
        assert f"{side} AUTH LOGIN (credentials hidden)" in text
        assert f"{side} (AUTH continuation hidden)" in text
    assert "dXNlcg==" not in text and "c2VjcmV0" not in text
    assert "CLIENT < EHLO c" in text  # everything else is traced as it is


async def test_spool_outgrowing_memory_in_a_missing_temp_directory_is_451(
    tmp_path: Path,
) -> None:
    """A small message never touches TempDirectory; a big one needs it, and fails cleanly."""
    missing = tmp_path / "missing"
    missing.mkdir()  # a start without it is refused: it vanishes once the proxy runs
    config = f"TempDirectory: {missing}"
    with trio.fail_after(10):
        async with proxied(config) as (up, proxy), proxy.connect() as client:
            missing.rmdir()
            small = b"Subject: small\r\n\r\nbody\r\n"
            assert (await client.send_message("s@x", ["r@x"], small))[-1].code == 250
            big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (BUFFER_SIZE // 1000 + 1)
            replies = await client.send_message("s@x", ["r@x"], big)
            assert replies[-1] == Reply.single(451, "Local Error")
            assert (await client.command("NOOP")).code == 250  # read to its end (B2)
            assert [t.message for t in up.transactions] == [small]


async def test_max_message_size_advertised_and_enforced(spool_writes: list[int]) -> None:
    written = spool_writes
    with trio.fail_after(10):
        async with proxied("MaxMessageSize: 100") as (up, proxy), proxy.connect() as client:
            await client.greeting()
            ehlo = await client.command("EHLO c.example")
            assert "SIZE 100" in ehlo.lines and "SIZE 10240000" not in ehlo.lines
            assert (await client.command("MAIL FROM:<s@x> SIZE=101")).code == 552
            assert not any(c.startswith(b"MAIL") for c in up.commands)  # never asked
            await client.command("MAIL FROM:<s@x>")
            await client.command("RCPT TO:<r@x>")
            assert (await client.command("DATA")).code == 354
            await client.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 50 + b".\r\n")
            assert (await client.read_reply()).code == 552
            assert sum(written) < 100 + 1000 + 16  # writing stopped at the limit
            assert (await client.command("NOOP")).code == 250
            small = b"Subject: s\r\n\r\nok\r\n"
            assert (await client.send_message("s@x", ["r@x"], small))[-1].code == 250
            assert [t.message for t in up.transactions] == [small]
