"""The relay with real filter processes and the Header option (spec §8-§10, §17 T11-T34).

Real processes mean the real clock: these tests keep their waits short.  Every test checks
that no filter process and no spool file is left behind.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from trio_proxsmtp.common.log import ID_PATTERN, LOGGER_NAME
from trio_proxsmtp.testing import FakeClient, FakeUpstream, RunningProxy, run_proxy

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


@pytest.fixture(autouse=True)
def _info_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)


def summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = (r.getMessage().partition(": ")[2] for r in caplog.records)
    return [line for line in lines if line.startswith("client=")]


def filter_processes(temp_directory: str) -> list[int]:
    """Live processes started by this proxy's filters: their environment has our TMPDIR."""
    marker = f"TMPDIR={temp_directory}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue  # gone, or not ours
        if marker in environ.split(b"\0"):
            found.append(int(entry))
    return found


async def wait_no_filter_processes(temp_directory: str, within: float) -> None:
    with trio.fail_after(within):
        while filter_processes(temp_directory):
            await trio.sleep(0.02)


@asynccontextmanager
async def proxied(
    config: str, up: FakeUpstream | None = None
) -> AsyncIterator[tuple[FakeUpstream, RunningProxy]]:
    """An upstream and the proxy; at the end no spool file and no filter process is left."""
    async with (
        FakeUpstream() if up is None else up as upstream,
        run_proxy(config, upstream=upstream) as proxy,
    ):
        yield upstream, proxy
        await wait_no_filter_processes(proxy.temp_directory, 2)
        assert proxy.leftovers() == []


async def standard(client: FakeClient, message: bytes = MESSAGE) -> list[int]:
    replies = await client.send_message("s@x", ["r@x"], message, helo="c")
    return [r.code for r in replies]


# -- delivering -----------------------------------------------------------------------------


async def test_t11_cat_filter_delivers(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(20):
        async with proxied("FilterCommand: cat") as (up, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            await client.command("MAIL FROM:<s@x>")
            await client.command("RCPT TO:<r@x>")
            reply = await client.command("DATA")
            assert reply.to_bytes() == b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
            assert b"DATA" not in up.commands  # not before the message is filtered
            await client.send(MESSAGE + b".\r\n")
            assert (await client.read_reply()).text.startswith("250 2.0.0 Ok: queued")
            [t] = up.transactions
            assert (t.mail_from, t.rcpt_to, t.data) == ("s@x", ["r@x"], MESSAGE)
    [summary] = summaries(caplog)
    assert summary.startswith(
        "client=127.0.0.1, from=<s@x>, to=<r@x>, status=FILTERED, upstream=250"
    )


async def test_t12_filter_sees_unstuffed_message_and_environment(tmp_path: Path) -> None:
    dump = tmp_path / "stdin"
    env = tmp_path / "env"
    config = f"FilterCommand: cat > {dump}; env > {env}; cat {dump}"
    message = b"Subject: t\r\n\r\n.leading dot\r\n.\r\nend\r\n"
    with trio.fail_after(20):
        async with proxied(config) as (up, proxy), proxy.connect() as client:
            assert await standard(client, message) == [250, 250, 354, 250]
            temp_directory = proxy.temp_directory
            [t] = up.transactions
    # B7: the filter sees the message itself, not its transparency dots; the replay is
    # stuffed again so that the "." line does not end the data early.
    assert dump.read_bytes() == message
    assert t.message == message
    assert t.data == message.replace(b"\r\n.", b"\r\n..")
    variables = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line)
    assert variables["CLIENT"] == "127.0.0.1"
    assert variables["SERVER"] == "127.0.0.1"
    assert variables["TMPDIR"] == temp_directory
    assert variables["SENDER"] == "s@x" and variables["RECIPIENTS"] == "r@x"
    assert "EMAIL" not in variables


async def test_t13_t14_envelope_in_environment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "vars"
    config = f'FilterCommand: printf "%s|%s" "$SENDER" "$RECIPIENTS" > {out}; cat'
    with trio.fail_after(20):
        async with proxied(config) as (_, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            await client.command("MAIL FROM: p@x SIZE=10")
            await client.command("RCPT TO:<a@x>")
            await client.command("RCPT TO:<reject@x>")
            await client.command("RCPT TO: <b@x> NOTIFY=NEVER")
            await client.command("DATA")
            await client.send(MESSAGE + b".\r\n")
            assert (await client.read_reply()).code == 250
            assert out.read_text() == "p@x|a@x\nb@x"
            await client.command("MAIL FROM:<>")
            await client.command("RCPT TO:<c@x>")
            await client.command("DATA")
            await client.send(MESSAGE + b".\r\n")
            assert (await client.read_reply()).code == 250
            assert out.read_text() == "<>|c@x"
    first, second = summaries(caplog)
    assert first.startswith("client=127.0.0.1, from=<p@x>, to=<a@x>, to=<b@x>, status=FILTERED")
    assert second.startswith("client=127.0.0.1, from=<>, to=<c@x>, status=FILTERED")


async def test_t34_xforward_environment(tmp_path: Path) -> None:
    out = tmp_path / "vars"
    config = f'FilterCommand: printf "%s|%s" "$REMOTE" "$REMOTE_HELO" > {out}; cat'
    with trio.fail_after(20):
        async with proxied(config) as (_, proxy), proxy.connect() as client:
            await client.command("EHLO c")
            assert (
                await client.command("XFORWARD HELO = [weird helo] ADDR=[IPv6:2001:db8::1]")
            ).code == 250
            assert await standard(client) == [250, 250, 354, 250]
    assert out.read_text() == "IPv6:2001:db8::1|weird helo"


async def test_t19_stderr_ignored_on_success() -> None:
    with trio.fail_after(20):
        async with (
            proxied("FilterCommand: cat; echo '550 x' >&2; exit 0") as (up, proxy),
            proxy.connect() as client,
        ):
            assert await standard(client) == [250, 250, 354, 250]
            assert up.transactions[0].message == MESSAGE


async def test_t24_replacement_without_reading_stdin() -> None:
    config = r"FilterCommand: printf 'Subject: replaced\r\n\r\nnew body\r\n'; exit 0"
    big = b"Subject: t\r\n\r\n" + b"x" * 998 + b"\r\n" * 300  # more than a pipe buffer
    with trio.fail_after(20):
        async with proxied(config) as (up, proxy), proxy.connect() as client:
            assert await standard(client, big) == [250, 250, 354, 250]
            assert up.transactions[0].message == b"Subject: replaced\r\n\r\nnew body\r\n"


async def test_t25_empty_output_is_a_filter_error() -> None:
    # 1.10 delivered an empty message; now 451 (issue 16; tests/hostile has the details).
    with trio.fail_after(20):
        async with (
            proxied("FilterCommand: cat >/dev/null; exit 0") as (up, proxy),
            proxy.connect() as client,
        ):
            assert await standard(client) == [250, 250, 354, 451]
            assert up.transactions == []


async def test_b7_output_without_final_newline() -> None:
    config = r"FilterCommand: cat >/dev/null; printf 'Subject: x\r\n\r\nno newline'"
    with trio.fail_after(20):
        async with proxied(config) as (up, proxy), proxy.connect() as client:
            assert await standard(client) == [250, 250, 354, 250]
            assert up.transactions[0].data == b"Subject: x\r\n\r\nno newline\r\n"


async def test_b7_output_with_dot_line_is_stuffed() -> None:
    config = r"FilterCommand: cat >/dev/null; printf 'a\r\n.\r\n.b\nc\r\n'"
    with trio.fail_after(20):
        async with proxied(config) as (up, proxy), proxy.connect() as client:
            assert await standard(client) == [250, 250, 354, 250]
            [t] = up.transactions
            assert t.data == b"a\r\n..\r\n..b\r\nc\r\n"  # bare LF normalised, dots stuffed
            # The session is still in step: the next command gets its own reply.
            assert (await client.command("NOOP")).code == 250


async def test_t26_file_mode(tmp_path: Path) -> None:
    record = tmp_path / "email"
    script = tmp_path / "filter.sh"
    script.write_text(
        f'echo "$EMAIL" > {record}; stat -c %a "$EMAIL" >> {record}\n'
        '{ printf \'X-Seen: yes\\r\\n\'; cat "$EMAIL"; } > "$EMAIL.new"\n'
        'mv "$EMAIL.new" "$EMAIL"\n'
    )
    config = f"FilterType: file\nFilterCommand: sh {script}"
    with trio.fail_after(20):
        async with proxied(config) as (up, proxy), proxy.connect() as client:
            assert await standard(client) == [250, 250, 354, 250]
            assert up.transactions[0].message == b"X-Seen: yes\r\n" + MESSAGE
            path, mode = record.read_text().split()
            assert os.path.dirname(path) == proxy.temp_directory.rstrip("/")
            assert os.path.basename(path).startswith("proxsmtpd.")
            assert mode == "600"
            assert not os.path.exists(path)


# -- rejecting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "wire", "status"),
    [
        ("echo '550 Bad Email' >&2; exit 1", b"550 Bad Email\r\n", "status=REJECTED"),
        ("echo 'Virus found' >&2; exit 1", b"550 Content Rejected; Virus found\r\n", "Virus"),
        ("exit 1", b"550 Content Rejected; Content Rejected\r\n", "status=REJECTED"),
        (
            "cat >/dev/null; echo '250 Dropped' >&2; exit 1",
            b"250 Dropped\r\n",
            "status=DROPPED",
        ),
        (
            r"printf 'first line\n  second line  \n\n   \n' >&2; exit 3",
            b"550 Content Rejected; second line\r\n",
            "status=REJECTED",
        ),
        ("echo '550-5.7.1 multi' >&2; exit 1", b"550 5.7.1 multi\r\n", "status=REJECTED"),
        ("cat >/dev/null; kill -9 $$", b"451 Local Error\r\n", "status=FILTER-ERROR"),
    ],
    ids=["t15", "t16", "t17", "t18-drop", "t20", "b8-continuation", "t21-signal"],
)
async def test_filter_verdicts_not_delivered(
    command: str, wire: bytes, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        async with proxied(f"FilterCommand: {command}") as (up, proxy), proxy.connect() as client:
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            before = len(client.received)
            await client.send(MESSAGE + b".\r\n")
            await client.read_reply()
            assert bytes(client.received[before:]) == wire
            # The session remains usable, and in step with the upstream.
            assert (await client.command("NOOP")).code == 250
            assert up.transactions == []
            assert up.commands[-2:] == [b"RSET", b"NOOP"] and b"DATA" not in up.commands
    [summary] = summaries(caplog)
    assert summary.startswith("client=127.0.0.1, from=<s@x>, to=<r@x>, ") and status in summary


async def test_filter_timeout_kills_group(caplog: pytest.LogCaptureFixture) -> None:
    config = "FilterTimeout: 1\nFilterCommand: sh -c 'sleep 30; cat'"
    with trio.fail_after(20):
        async with proxied(config) as (up, proxy), proxy.connect() as client:
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            await client.send(MESSAGE + b".\r\n")
            start = time.monotonic()
            reply = await client.read_reply()
            assert reply.to_bytes() == b"451 Local Error\r\n"
            assert 0.9 < time.monotonic() - start < 5
            await up.wait_until(lambda: up.commands[-1:] == [b"RSET"])
            assert up.transactions == []
            await wait_no_filter_processes(proxy.temp_directory, 1)
    assert "status=FILTER-ERROR" in summaries(caplog)[0]


# -- the client leaving ---------------------------------------------------------------------------


async def test_client_vanishes_while_filter_runs(caplog: pytest.LogCaptureFixture) -> None:
    config = "FilterCommand: cat > /dev/null; sleep 30; cat"
    with trio.fail_after(20):
        async with (
            proxied(config) as (up, proxy),
            proxy.connect() as client,
        ):
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            await client.send(MESSAGE + b".\r\n")
            with trio.fail_after(5):
                while not filter_processes(proxy.temp_directory):
                    await trio.sleep(0.02)
            await client.aclose()
            # The client is gone: the filter's whole group goes within a second.
            await wait_no_filter_processes(proxy.temp_directory, 1)
            await up.wait_until(lambda: up.active_connections == 0)
            assert up.transactions == [] and b"DATA" not in up.commands
            assert proxy.leftovers() == []
    assert "client disconnected before its message was answered" in caplog.text


async def test_client_vanishes_in_data_with_filter() -> None:
    with trio.fail_after(20):
        async with (
            proxied("FilterCommand: cat") as (up, proxy),
            proxy.connect() as client,
        ):
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            await client.send(b"Subject: t\r\n\r\nhalf a message")
            await client.aclose()
            await up.wait_until(lambda: up.active_connections == 0)
            assert up.transactions == [] and b"DATA" not in up.commands


async def test_quit_pipelined_after_dot_still_delivers() -> None:
    with trio.fail_after(20):
        async with (
            proxied("FilterCommand: sleep 0.3; cat") as (up, proxy),
            proxy.connect() as client,
        ):
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            await client.send(MESSAGE + b".\r\nQUIT\r\n")
            assert (await client.read_reply()).code == 250
            assert (await client.read_reply()).code == 221
            assert up.transactions[0].message == MESSAGE


# -- KeepAlives while the filter runs (B24) -----------------------------------------------------


async def test_keepalives_while_filter_runs() -> None:
    with trio.fail_after(20):
        async with (
            proxied("KeepAlives: 1\nFilterCommand: sleep 2.5; cat") as (up, proxy),
            proxy.connect() as client,
        ):
            assert await standard(client) == [250, 250, 354, 250]
            assert (await client.command("NOOP")).code == 250  # replies still in step
            rcpt = up.commands.index(b"RCPT TO:<r@x>")
            noops = up.commands[rcpt + 1 : up.commands.index(b"DATA")]
            assert noops and set(noops) == {b"NOOP"}
            assert up.transactions[0].message == MESSAGE


# -- Header (spec §10) ----------------------------------------------------------------------------


async def test_t27_header_before_first_blank_line() -> None:
    message = b"Subject: t\r\nX-2: y\r\n\r\nbody\r\n\r\nmore\r\n"
    with trio.fail_after(20):
        async with proxied("Header: X-F: %i %l") as (up, proxy), proxy.connect() as client:
            assert await standard(client, message) == [250, 250, 354, 250]
            assert up.transactions[0].message == (
                b"Subject: t\r\nX-2: y\r\nX-F: 127.0.0.1 127.0.0.1\r\n\r\nbody\r\n\r\nmore\r\n"
            )


async def test_t28_received_header_first() -> None:
    with trio.fail_after(20):
        async with (
            proxied("Header: Received: from %i\nFilterCommand: cat") as (up, proxy),
            proxy.connect() as client,
        ):
            assert await standard(client) == [250, 250, 354, 250]
            assert up.transactions[0].message == b"Received: from 127.0.0.1\r\n" + MESSAGE


async def test_t29_header_escapes(caplog: pytest.LogCaptureFixture) -> None:
    config = r"Header: X-A: one\r\nX-B: two\tT \\ \q %% %x"
    with trio.fail_after(20):
        async with proxied(config) as (up, proxy), proxy.connect() as client:
            assert await standard(client) == [250, 250, 354, 250]
            assert up.transactions[0].message == (
                b"Subject: t\r\nX-A: one\r\nX-B: two\tT \\ q % \r\n\r\nbody\r\n"
            )
    assert "invalid header symbol: %x" in caplog.text


@pytest.fixture
def timezone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    zone: str = request.param
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    yield zone
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    ("timezone", "offsets"),
    [("Europe/Berlin", {"+0100", "+0200"}), ("Asia/Kolkata", {"+0530"})],
    indirect=["timezone"],
)
async def test_t30_header_date_rfc5322(timezone: str, offsets: set[str]) -> None:
    with trio.fail_after(20):
        async with proxied("Header: X-D: %d") as (up, proxy), proxy.connect() as client:
            assert await standard(client) == [250, 250, 354, 250]
            head = up.transactions[0].message.split(b"\r\n")[1].decode()
    match = re.fullmatch(r"X-D: (\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} ([+-]\d{4}))", head)
    assert match is not None, head
    assert match.group(2) in offsets
    sent = datetime.datetime.strptime(match.group(1), "%a, %d %b %Y %H:%M:%S %z")
    assert abs(sent - datetime.datetime.now(datetime.UTC)) < datetime.timedelta(minutes=1)


async def test_no_header_on_rejection() -> None:
    config = "Header: X-H: y\nFilterCommand: cat >/dev/null; exit 1"
    with trio.fail_after(20):
        async with proxied(config) as (up, proxy), proxy.connect() as client:
            assert (await standard(client))[-1] == 550
            assert b"X-H: y" not in up.received


def test_filter_processes_finds_only_marked(tmp_path: Path) -> None:
    """The leak check itself: it sees a process carrying our TMPDIR, and only that."""
    import subprocess

    marker = str(tmp_path)
    child = subprocess.Popen(["sleep", "30"], env={"TMPDIR": marker, "PATH": os.defpath})
    try:
        assert filter_processes(marker) == [child.pid]
        assert filter_processes(marker + "-other") == []
    finally:
        child.kill()
        child.wait()
    assert filter_processes(marker) == []


async def test_filter_log_lines_carry_the_connection_id(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(10):
        async with proxied("FilterCommand: cat") as (_up, proxy), proxy.connect() as client:
            assert (await standard(client))[-1] == 250
    filter_lines = [r.getMessage() for r in caplog.records if "filter command" in r.getMessage()]
    assert filter_lines  # started, exited
    assert all(re.match(rf"{ID_PATTERN}: filter command", line) for line in filter_lines)


# Lines about the process, not about one connection: the only ones without an id.
PROCESS_LINES = re.compile(r"listening on |shutting down: |shut down$")


async def test_every_line_of_a_session_carries_its_connection_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    config = "FilterCommand: cat\nFilterType: file\nHeader: X-F: %i %q\nKeepAlives: 1"
    with trio.fail_after(10):
        async with proxied(config) as (_up, proxy), proxy.connect() as client:
            assert (await standard(client))[-1] == 250
            await client.quit()
    lines = [r.getMessage() for r in caplog.records]
    about_sessions = [line for line in lines if not PROCESS_LINES.search(line)]
    # protocol trace, spool, filter, the header's warning, summary, the end
    assert len(about_sessions) > 30
    assert any("client=" in line for line in about_sessions)
    assert any("%q" in line for line in about_sessions)  # the Header's warning
    assert [line for line in about_sessions if not re.match(rf"{ID_PATTERN}: ", line)] == []
    assert len({line.split(":", 1)[0] for line in about_sessions}) == 1
