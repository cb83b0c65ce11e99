"""Issue 21, case 16: the timeout chain and the duplicate window.

FilterTimeout, the milters' timeouts and ReplyTimeOut each bound one stage after the
client's final ".", so together they could pass Postfix's `smtpd_proxy_timeout` (100 s by
default): Postfix gave up and sent again while the proxy delivered.  MessageTimeOut bounds
them all (docs/behaviour.md §8.1): past it, before the replay's final "." went out, the
client gets 451 4.4.2 and nothing is delivered; once the final "." went, the proxy waits
for the next server's reply (a 4xx then would invite the duplicate), and a client that
leaves meanwhile (the duplicate window) is logged and counted.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import trio
import trio.testing
from hostile_support import MESSAGE, memory_connection

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.common.metrics import Metrics
from trio_proxsmtp.daemon import cli
from trio_proxsmtp.daemon.prometheus import PrometheusMetrics
from trio_proxsmtp.protocol.session.states import State
from trio_proxsmtp.testing import END_OF_DATA, FakeUpstream, run_proxy
from trio_proxsmtp.testing.fake_milter import STALL, FakeMilter

TIMED_OUT = "451 4.4.2 smtp.passthru Error: message timeout exceeded"
DUPLICATE = "client disconnected after its message went to the next server"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps once every task waited 0.1 s of real time (a filter is a
    real process: it runs, or is killed, before the clock moves on)."""
    return trio.testing.MockClock(autojump_threshold=0.1)


class Counting(Metrics):
    def __init__(self) -> None:
        self.left = 0

    def left_after_commit(self) -> None:
        self.left += 1


@pytest.mark.parametrize(
    ("config", "delays", "stage"),
    [
        # A filter that takes longer than MessageTimeOut, well within its FilterTimeout.
        ("FilterCommand: sleep 500; cat\nFilterTimeout: 600", {}, "the filter"),
        # The next server slow to answer our DATA, within ReplyTimeOut.
        ("ReplyTimeOut: 600", {"DATA": 500.0}, "the next server's reply"),
    ],
)
async def test_past_message_timeout_the_client_gets_451_and_nothing_is_delivered(
    config: str,
    delays: dict[str, float],
    stage: str,
    clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    up = FakeUpstream(delays=delays)
    with trio.fail_after(1000):
        async with memory_connection(f"{config}\nMessageTimeOut: 40", up) as (client, _):
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            await client.send(MESSAGE + b".\r\n")
            sent = trio.current_time()
            reply = await client.read_reply()
            assert trio.current_time() - sent == pytest.approx(40.0, abs=0.5)
            assert reply.to_bytes() == f"{TIMED_OUT}\r\n".encode()
            await client.read_eof()  # and the connection closes: no final "." upstream
    assert up.transactions == []
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"MessageTimeOut exceeded: {stage} not done 40 s" in m for m in messages)
    [summary] = [m for m in messages if "status=" in m]
    assert "reason=message timeout" in summary


async def test_a_stalled_milter_within_its_own_timeout_is_cut_at_message_timeout(
    clock: trio.testing.MockClock,
) -> None:
    milter = FakeMilter({"eom": STALL})  # MilterContentTimeout 600: MessageTimeOut comes first
    up = FakeUpstream()
    with trio.fail_after(1000):
        async with milter.serving() as address:
            config = f"Milters: {address}\nMilterContentTimeout: 600\nMessageTimeOut: 40"
            async with memory_connection(config, up) as (client, _):
                assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
                await client.send(MESSAGE + b".\r\n")
                sent = trio.current_time()
                reply = await client.read_reply()
                assert reply.to_bytes() == f"{TIMED_OUT}\r\n".encode()
                assert trio.current_time() - sent == pytest.approx(40.0, abs=0.5)
                await client.read_eof()
    assert up.transactions == []


async def test_once_the_final_dot_went_the_reply_is_awaited_and_relayed(
    clock: trio.testing.MockClock,
) -> None:
    # The next server takes 50 s to answer the final ".": past MessageTimeOut, but the
    # message may be delivered already, so its reply is the client's (no 451).
    up = FakeUpstream(delays={END_OF_DATA: 50.0})
    with trio.fail_after(1000):
        async with memory_connection("MessageTimeOut: 40", up) as (client, _):
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            await client.send(MESSAGE + b".\r\n")
            sent = trio.current_time()
            reply = await client.read_reply()
            assert reply.code == 250
            assert trio.current_time() - sent == pytest.approx(50.0, abs=0.5)
            assert (await client.quit()).code == 221
    assert len(up.transactions) == 1


async def test_the_deadline_of_one_message_does_not_carry_to_the_next(
    clock: trio.testing.MockClock,
) -> None:
    up = FakeUpstream(delays={"DATA": 30.0})
    with trio.fail_after(1000):
        async with memory_connection("MessageTimeOut: 40", up) as (client, _):
            for _ in range(3):  # 30 s each: 90 s in all, never 40 s for one message
                replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c")
                assert replies[-1].code == 250
    assert len(up.transactions) == 3


async def test_a_client_leaving_after_the_final_dot_went_is_logged_and_counted(
    clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Memory streams: the client is watched while the final "." waits for its reply.
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    up = FakeUpstream(delays={END_OF_DATA: 30.0})
    counting = Counting()
    with trio.fail_after(1000):
        async with memory_connection("", up) as (client, connection):
            connection.transaction.metrics = counting
            assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
            await client.send(MESSAGE + b".\r\n")
            await trio.testing.wait_all_tasks_blocked()
            assert connection.session.state is State.REPLAY
            await trio.sleep(5)
            await client.stream.send_eof()  # it leaves while the next server decides
            await client.read_eof()
            await up.wait_until(lambda: len(up.transactions) == 1)
    assert counting.left == 1
    assert [r for r in caplog.records if DUPLICATE in r.getMessage()]
    [warning] = [r for r in caplog.records if DUPLICATE in r.getMessage()]
    assert warning.levelno == logging.WARNING


async def test_the_duplicate_window_on_a_socket_counts_in_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A plain socket: the proxy peeks at it when the reply comes.  Real time (0.5 s).
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    metrics = PrometheusMetrics()
    name = "proxsmtpd_left_after_commit_total"
    assert f"{name} 0.0" in metrics.exposition()[0].decode()  # there from the start
    with trio.fail_after(30):
        async with (
            FakeUpstream(delays={END_OF_DATA: 0.5}) as up,
            run_proxy("", upstream=up, metrics=metrics) as proxy,
        ):
            async with proxy.connect() as client:
                assert (await client.start_message("s@x", ["r@x"], helo="c"))[-1].code == 354
                await client.send(MESSAGE + b".\r\n")
                await trio.sleep(0.25)  # the final "." is upstream by now
            # The client is gone before the next server answered.
            await up.wait_until(lambda: len(up.transactions) == 1)
            while f"{name} 1.0" not in metrics.exposition()[0].decode():
                await trio.sleep(0.01)
    assert [r for r in caplog.records if DUPLICATE in r.getMessage()]


async def test_a_client_that_stays_is_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    metrics = PrometheusMetrics()
    with trio.fail_after(30):
        async with (
            FakeUpstream(delays={END_OF_DATA: 0.2}) as up,
            run_proxy("", upstream=up, metrics=metrics) as proxy,
            proxy.connect() as client,
        ):
            replies = await client.send_message("s@x", ["r@x"], MESSAGE, helo="c")
            assert replies[-1].code == 250
            assert (await client.quit()).code == 221
    assert "proxsmtpd_left_after_commit_total 0.0" in metrics.exposition()[0].decode()
    assert not [r for r in caplog.records if DUPLICATE in r.getMessage()]


# -- -t: the chain against MessageTimeOut ---------------------------------------------------


def write_conf(tmp_path: Path, extra: str) -> str:
    path = tmp_path / "proxsmtpd.conf"
    path.write_text(
        f"Listen: 127.0.0.1:2525\nOutAddress: 127.0.0.1:2526\nTempDirectory: {tmp_path}\n"
        f"{extra}\nWorkers: 1\n"
    )
    return str(path)


@pytest.mark.parametrize(
    ("extra", "warning"),
    [
        (
            "FilterCommand: cat\nFilterTimeout: 60\nReplyTimeOut: 60",
            "FilterTimeout 60 + ReplyTimeOut 60 = 120 s exceeds MessageTimeOut 90",
        ),
        (
            "Milters: inet:127.0.0.1:8891, unix:/run/m.sock\nMilterContentTimeout: 20\n"
            "ReplyTimeOut: 60\nMessageTimeOut: 80",
            "MilterContentTimeout 20 x 2 + ReplyTimeOut 60 = 100 s exceeds MessageTimeOut 80",
        ),
        # A MessageTimeOut set in the file meets every stage's limit, defaults included.
        (
            "FilterCommand: cat\nMessageTimeOut: 60",
            "FilterTimeout 30 + ReplyTimeOut 180 = 210 s exceeds MessageTimeOut 60",
        ),
        # A limit set in the file that MessageTimeOut (default) would cut.
        ("FilterCommand: cat\nFilterTimeout: 120", "FilterTimeout 120 = 120 s exceeds"),
    ],
)
def test_check_warns_when_the_chain_exceeds_message_timeout(
    tmp_path: Path, extra: str, warning: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_conf(tmp_path, extra)
    assert cli.main(["-t", "-f", path]) == 0
    out, err = capsys.readouterr()
    assert out == f"config OK: {path}\n"
    [line] = err.splitlines()
    assert line.startswith(f"proxsmtpd: warning: {warning}")
    assert "smtpd_proxy_timeout" in line


@pytest.mark.parametrize(
    "extra",
    [
        "FilterCommand: cat\nFilterTimeout: 30\nReplyTimeOut: 60\nMessageTimeOut: 90",  # 90
        "FilterCommand: cat\nMessageTimeOut: 250",
        # The defaults alone (30 + 180 past 90): MessageTimeOut is their bound, no nag.
        "FilterCommand: cat",
        "FilterCommand: cat\nFilterTimeout: 5",
        # No filter, no milters: only the next server's replies follow the final ".".
        "MessageTimeOut: 10",
    ],
)
def test_check_is_quiet_when_the_chain_fits(
    tmp_path: Path, extra: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_conf(tmp_path, extra)
    assert cli.main(["-t", "-f", path]) == 0
    assert capsys.readouterr() == (f"config OK: {path}\n", "")


def test_message_timeout_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_conf(tmp_path, "MessageTimeOut: 0")
    assert cli.main(["-t", "-f", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"proxsmtpd: {path}:4: MessageTimeOut: must be between 1 and ")


def test_the_default_is_below_postfix_smtpd_proxy_timeout() -> None:
    from trio_proxsmtp.config.model import Config

    assert Config().message_timeout == 90.0 < 100.0
    assert not math.isinf(Config().message_timeout)


# -- BDAT: the LAST chunk is the final "." ---------------------------------------------------


async def test_bdat_past_message_timeout_gets_451_and_nothing_is_delivered(
    clock: trio.testing.MockClock,
) -> None:
    up = FakeUpstream()
    config = "Chunking: on\nFilterCommand: sleep 500; cat\nFilterTimeout: 600\nMessageTimeOut: 40"
    with trio.fail_after(1000):
        async with memory_connection(config, up) as (client, _):
            started = trio.current_time()
            replies = await client.send_message_bdat("s@x", ["r@x"], MESSAGE, helo="c")
            assert replies[-1].to_bytes() == f"{TIMED_OUT}\r\n".encode()
            assert trio.current_time() - started == pytest.approx(40.0, abs=0.5)
            await client.read_eof()
    assert up.transactions == []


async def test_bdat_once_the_last_chunk_went_the_reply_is_awaited(
    clock: trio.testing.MockClock,
) -> None:
    # The next server takes 50 s to answer the LAST chunk: its 250 is the client's.
    up = FakeUpstream(delays={END_OF_DATA: 50.0})
    with trio.fail_after(1000):
        async with memory_connection("Chunking: on\nMessageTimeOut: 40", up) as (client, _):
            replies = await client.send_message_bdat("s@x", ["r@x"], MESSAGE, helo="c")
            assert replies[-1].code == 250
    assert len(up.transactions) == 1
