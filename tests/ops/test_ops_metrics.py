"""Prometheus metrics: what is counted, the exposition, several processes, /metrics over HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
import trio.testing
from ops_support import background, free_port, proxy_process, wait_for, write_config
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from trio_proxsmtp.common.address import Address, AddressKind
from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics, reply_class
from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.daemon.metrics_http import (
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT,
    handle_metrics_request,
    serve_metrics,
)
from trio_proxsmtp.daemon.prometheus import (
    MULTIPROC_ENV,
    MultiprocessDirectory,
    PrometheusMetrics,
    bind_metrics_listener,
)
from trio_proxsmtp.daemon.reload import applicable_reload
from trio_proxsmtp.testing import END_OF_DATA, FakeClient, FakeUpstream, open_client, run_proxy
from trio_proxsmtp.testing.certs import TestCertificates
from trio_proxsmtp.testing.upstream import Session as UpstreamSession

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(exposition: bytes) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(exposition.decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def record_a_known_mix(metrics: Metrics) -> None:
    metrics.connection_accepted()
    metrics.connection_accepted()
    metrics.connection_accepted()
    metrics.connection_refused("busy")
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.connection_closed()
    metrics.message_done("FILTERED", 250, 1000)
    metrics.message_done("FILTERED", 250, 3000)
    metrics.message_done("REJECTED", None, 500)
    metrics.message_done("TEMP-FAIL", 451, 100)  # a status this module does not know of
    metrics.message_done("FILTERED", 554, 70_000)
    metrics.filter_ran(0.2)
    metrics.filter_ran(20.0)
    metrics.filter_failed("timeout")
    metrics.upstream_round_trip(0.004)
    metrics.bytes_received("client", 1234)
    metrics.bytes_sent("upstream", 1000)
    metrics.bytes_sent("upstream", 200)
    metrics.tls_started("client")


def expected_mix(times: int) -> Samples:
    return {
        ("proxsmtpd_connections_accepted_total", ()): 3 * times,
        ("proxsmtpd_connections_refused_total", (("reason", "busy"),)): 1 * times,
        ("proxsmtpd_messages_total", (("status", "FILTERED"), ("upstream", "2xx"))): 2 * times,
        ("proxsmtpd_messages_total", (("status", "FILTERED"), ("upstream", "5xx"))): 1 * times,
        ("proxsmtpd_messages_total", (("status", "REJECTED"), ("upstream", "none"))): 1 * times,
        ("proxsmtpd_messages_total", (("status", "TEMP-FAIL"), ("upstream", "4xx"))): 1 * times,
        ("proxsmtpd_message_size_bytes_count", ()): 5 * times,
        ("proxsmtpd_message_size_bytes_sum", ()): 74_600 * times,
        ("proxsmtpd_message_size_bytes_bucket", (("le", "1024.0"),)): 3 * times,
        ("proxsmtpd_filter_duration_seconds_count", ()): 2 * times,
        ("proxsmtpd_filter_duration_seconds_bucket", (("le", "0.25"),)): 1 * times,
        ("proxsmtpd_filter_duration_seconds_bucket", (("le", "10.0"),)): 1 * times,
        ("proxsmtpd_filter_duration_seconds_bucket", (("le", "30.0"),)): 2 * times,
        ("proxsmtpd_filter_failures_total", (("reason", "timeout"),)): 1 * times,
        ("proxsmtpd_upstream_round_trip_seconds_count", ()): 1 * times,
        ("proxsmtpd_bytes_received_total", (("peer", "client"),)): 1234 * times,
        ("proxsmtpd_bytes_sent_total", (("peer", "upstream"),)): 1200 * times,
        ("proxsmtpd_tls_sessions_total", (("side", "client"),)): 1 * times,
    }


def assert_contains(found: Samples, expected: Samples) -> None:
    for key, value in expected.items():
        assert found.get(key) == pytest.approx(value), key


def test_reply_class() -> None:
    assert [reply_class(c) for c in (250, 354, 421, 554, None, 999)] == [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "none",
        "none",
    ]


def test_counts_in_one_process() -> None:
    metrics = PrometheusMetrics()
    record_a_known_mix(metrics)
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    found = samples(body)
    assert_contains(found, expected_mix(1))
    assert found[("proxsmtpd_connections_active", ())] == 1
    with metrics.session():
        assert samples(metrics.exposition()[0])[("proxsmtpd_connections_active", ())] == 2
    assert samples(metrics.exposition()[0])[("proxsmtpd_connections_active", ())] == 1


def test_two_instances_do_not_share_counts() -> None:
    first, second = PrometheusMetrics(), PrometheusMetrics()
    first.connection_accepted()
    assert samples(second.exposition()[0])[("proxsmtpd_connections_accepted_total", ())] == 0


def test_null_metrics_record_nothing_and_have_every_method() -> None:
    assert not NULL_METRICS.enabled
    record_a_known_mix(NULL_METRICS)
    with NULL_METRICS.session():
        pass
    with pytest.raises(RuntimeError):
        NULL_METRICS.exposition()
    public = {n for n in vars(PrometheusMetrics) if not n.startswith("_")}
    assert public <= set(dir(Metrics))


@pytest.fixture
def restore_multiprocess_mode() -> Iterator[None]:
    """The multi-process switch is process-wide: put it back for the other tests."""
    saved_env, saved_class = os.environ.get(MULTIPROC_ENV), values.ValueClass
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = saved_env
        values.ValueClass = saved_class


def fork_worker(directory: str, hold_open: int) -> int:
    """A worker as workers.py makes one: forked after the directory was made."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            metrics = PrometheusMetrics(multiprocess_dir=os.environ[MULTIPROC_ENV])
            assert os.environ[MULTIPROC_ENV] == directory
            record_a_known_mix(metrics)
            for _ in range(hold_open):
                metrics.connection_opened()
            status = 0
        finally:
            os._exit(status)
    return pid


@pytest.mark.usefixtures("restore_multiprocess_mode")
def test_two_worker_processes_add_up_and_a_dead_one_keeps_its_counts(tmp_path: Path) -> None:
    with MultiprocessDirectory(str(tmp_path)) as directory:
        assert os.environ[MULTIPROC_ENV] == directory.path
        first = fork_worker(directory.path, hold_open=2)
        second = fork_worker(directory.path, hold_open=0)
        for pid in (first, second):
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        scraper = PrometheusMetrics(multiprocess_dir=directory.path)
        found = samples(scraper.exposition()[0])
        assert_contains(found, expected_mix(2))
        assert found[("proxsmtpd_connections_active", ())] == 1 + 3  # 1 each, +2 held
        # The supervisor reaps the first worker: its open sessions are gone, its counts stay.
        directory.worker_died(first)
        found = samples(scraper.exposition()[0])
        assert_contains(found, expected_mix(2))
        assert found[("proxsmtpd_connections_active", ())] == 1
        path = directory.path
    assert not os.path.exists(path)
    assert MULTIPROC_ENV not in os.environ


# --- HTTP ----------------------------------------------------------------------------------


async def http(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        response = b""
        while data := await stream.receive_some():
            response += data
    return response


async def test_metrics_served_over_http_on_loopback() -> None:
    metrics = PrometheusMetrics()
    record_a_known_mix(metrics)
    sockets = bind_metrics_listener(Address(AddressKind.TCP, "127.0.0.1", 0, None, "x"))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            names = await nursery.start(serve_metrics, sockets, metrics.exposition)
            ((host, port),) = names
            assert host == "127.0.0.1"
            response = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200 OK\r\n")
            assert f"Content-Length: {len(body)}".encode() in head
            assert_contains(samples(body), expected_mix(1))

            head_only = await http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
            assert head_only.startswith(b"HTTP/1.0 200 OK\r\n") and head_only.endswith(b"\r\n\r\n")
            assert (await http(port, b"GET / HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 404 ")
            assert (await http(port, b"POST /metrics HTTP/1.0\r\n\r\n")).startswith(
                b"HTTP/1.0 405 "
            )
            assert (await http(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.0 400 ")
            nursery.cancel_scope.cancel()


async def test_a_silent_scraper_is_dropped_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server, client = trio.testing.memory_stream_pair()
    start = trio.current_time()
    await client.send_all(b"GET /metrics HTTP/1.0\r\n")  # never ends its headers
    await handle_metrics_request(server, PrometheusMetrics().exposition)
    assert trio.current_time() - start == pytest.approx(REQUEST_TIMEOUT)
    assert await client.receive_some() == b""  # closed without an answer


async def test_an_oversized_request_is_refused() -> None:
    server, client = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_metrics_request, server, PrometheusMetrics().exposition)
        await client.send_all(b"GET /metrics HTTP/1.0\r\n" + b"X-Pad: " + b"a" * 10_000)
        response = b""
        while data := await client.receive_some():
            response += data
    assert response.startswith(b"HTTP/1.0 400 ")


# --- the supervisor ----------------------------------------------------------------------

DYING_WORKERS = """\
import os, signal, sys
from trio_proxsmtp.common.log import setup_logging
from trio_proxsmtp.daemon.prometheus import MultiprocessDirectory, PrometheusMetrics
from trio_proxsmtp.daemon.workers import Supervisor
setup_logging(4)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

def work(slot):
    metrics = PrometheusMetrics(multiprocess_dir=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    metrics.connection_opened()  # and dies with the session open
    metrics.message_done("FILTERED", 250, 10)
    return 3

with MultiprocessDirectory(sys.argv[1]) as directory:
    status = Supervisor(2, work, on_worker_exit=directory.worker_died, restart_interval=0.1).run()
    body = PrometheusMetrics(multiprocess_dir=directory.path).exposition()[0]
    with open(sys.argv[2], "wb") as f:
        f.write(body)
sys.exit(status)
"""


async def test_dead_workers_keep_their_counts_and_leave_the_active_gauge(tmp_path: Path) -> None:
    out, scrape = tmp_path / "out.log", tmp_path / "scrape"
    with trio.fail_after(30):
        argv = [sys.executable, "-c", DYING_WORKERS, str(tmp_path), str(scrape)]
        with background(argv, out) as proc:
            await wait_for(lambda: out.read_text().count("starting a new one") >= 4)
            proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: proc.poll() is not None)
    assert proc.returncode == 0, out.read_text()
    started = len(re.findall(r"worker \d of 2 started", out.read_text()))
    found = samples(scrape.read_bytes())
    # Every worker that ever ran is in the totals, though all of them died.
    assert found[("proxsmtpd_messages_total", (("status", "FILTERED"), ("upstream", "2xx")))] == (
        started
    )
    assert found[("proxsmtpd_connections_active", ())] == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("proxsmtpd-metrics.")] == []


async def test_connections_at_once_are_bounded_and_a_scrape_takes_the_oldest_place() -> None:
    # (issue 21: the connection past the bound used to be closed unanswered; now it takes
    # the place of the oldest one still sending its request.)
    sockets = bind_metrics_listener(Address(AddressKind.TCP, "127.0.0.1", 0, None, "x"))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ((_, port),) = await nursery.start(
                serve_metrics, sockets, PrometheusMetrics().exposition
            )
            silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(MAX_CONNECTIONS)]
            await trio.sleep(0.2)  # all of them accepted, each holding its place
            response = await http(port, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert response.startswith(b"HTTP/1.0 200 OK")
            closed: list[trio.SocketStream] = []

            async def closed_soon(stream: trio.SocketStream) -> None:
                with trio.move_on_after(1):
                    if await stream.receive_some() == b"":
                        closed.append(stream)

            async with trio.open_nursery() as watch:
                for stream in silent:
                    watch.start_soon(closed_soon, stream)
            assert len(closed) == 1  # one silent connection made room for the scrape
            for stream in silent:
                await stream.aclose()
            nursery.cancel_scope.cancel()


# --- the real proxy: MetricsListen ---------------------------------------------------------

MIX_FILTER = """#!/bin/sh
msg=$(cat)
case "$msg" in
*"Subject: reject"*) echo "550 5.7.1 rejected by the test filter" >&2; exit 1 ;;
*"Subject: drop"*) echo "250 2.0.0 dropped by the test filter" >&2; exit 1 ;;
esac
printf '%s\\r\\n' "$msg"
"""
MAX_SIZE = 4000
# (sender, subject, body size, the client's final reply)
MIX = [
    ("a@x", "deliver", 0, 250),
    ("a@x", "deliver", 10, 250),
    ("a@x", "deliver", 20, 250),
    ("a@x", "reject", 0, 550),
    ("a@x", "reject", 0, 550),
    ("a@x", "drop", 0, 250),
    ("tempfail@x", "deliver", 0, 451),
    ("a@x", "too big", MAX_SIZE + 1, 552),
]
MIX_COUNTS = {
    ("FILTERED", "2xx"): 3,
    ("REJECTED", "none"): 2,
    ("DROPPED", "none"): 1,
    ("FILTERED", "4xx"): 1,
    ("TOO-BIG", "none"): 1,
}


def _temp_fail(line: bytes, session: UpstreamSession) -> str | None:
    return "451 4.3.0 try again later" if session.mail_from == "tempfail@x" else None


async def _scrape(port: int) -> Samples:
    response = await http(port, b"GET /metrics HTTP/1.0\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK"), head
    return samples(body)


def _messages(found: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["status"], dict(labels)["upstream"]): value
        for (name, labels), value in found.items()
        if name == "proxsmtpd_messages_total" and value  # (every one exists, at zero)
    }


@pytest.mark.parametrize("workers", [1, 2])
async def test_scraped_counts_of_a_known_mix(tmp_path: Path, workers: int) -> None:
    (tmp_path / "filter.sh").write_text(MIX_FILTER)
    temp = tmp_path / "tmp"  # the supervisor's metrics directory goes here ($TMPDIR)
    temp.mkdir()
    port, metrics_port = free_port(), free_port()
    with trio.fail_after(60):
        async with FakeUpstream(replies={END_OF_DATA: _temp_fail}) as up:
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n"
                f"TempDirectory: {tmp_path}\n"
                f"FilterCommand: /bin/sh {tmp_path / 'filter.sh'}\n"
                f"MaxMessageSize: {MAX_SIZE}\nMetricsListen: 127.0.0.1:{metrics_port}\n"
                f"Workers: {workers}\nMaxConnections: {workers}\n",
            )
            log = tmp_path / "proxy.log"
            with proxy_process(config, log, env={"TMPDIR": str(temp)}) as proxy:
                await proxy.wait_log(" serving " if workers > 1 else "listening on", count=workers)
                busy = 0
                async with AsyncExitStack() as stack:
                    # One session on each worker (each worker's share is one session).
                    clients: list[FakeClient] = []
                    while len(clients) < workers:
                        client = await stack.enter_async_context(open_client("127.0.0.1", port))
                        if (await client.greeting()).code == 220:
                            clients.append(client)
                        else:
                            busy += 1
                            await client.aclose()
                    for n, (sender, subject, size, code) in enumerate(MIX):
                        body = f"Subject: {subject}\r\n\r\n".encode() + b"x" * size + b"\r\n"
                        replies = await clients[n % workers].send_message(sender, ["b@x"], body)
                        assert replies[-1].code == code, subject
                    mid = await _scrape(metrics_port)
                    assert mid[("proxsmtpd_connections_active", ())] == workers
                    for client in clients:
                        await client.quit()
                await wait_for(lambda: up.active_connections == 0)
                found = await _scrape(metrics_port)
                assert _messages(found) == MIX_COUNTS
                assert found[("proxsmtpd_message_size_bytes_count", ())] == len(MIX)
                assert found[("proxsmtpd_connections_accepted_total", ())] == workers + busy
                refused = found.get(("proxsmtpd_connections_refused_total", (("reason", "busy"),)))
                assert (refused or 0) == busy
                assert found[("proxsmtpd_filter_duration_seconds_count", ())] == len(MIX) - 1
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
    assert list(temp.iterdir()) == []  # the multi-process directory is gone


def test_a_changed_metrics_listen_waits_for_a_restart() -> None:
    running = parse_config("OutAddress: 127.0.0.1:2525\nMetricsListen: 127.0.0.1:9100\n")
    new = parse_config("OutAddress: 127.0.0.1:2525\nMetricsListen: 127.0.0.1:9200\n")
    applied, problems = applicable_reload(running, new, running.workers)
    assert applied is not None and applied.metrics_listen == running.metrics_listen
    assert problems == [
        "MetricsListen changed from 127.0.0.1:9100 to 127.0.0.1:9200: a restart is needed to "
        "apply it"
    ]


async def test_a_metrics_listen_in_use_stops_start_up(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        config = write_config(
            tmp_path / "proxsmtpd.conf",
            f"Listen: 127.0.0.1:{free_port()}\nOutAddress: 127.0.0.1:2525\n"
            f"MetricsListen: 127.0.0.1:{busy}\n",
        )
        with trio.fail_after(30), proxy_process(config, tmp_path / "proxy.log") as proxy:
            assert await proxy.wait_exit() == 1
            assert f"couldn't bind MetricsListen: 127.0.0.1:{busy}: " in proxy.log()


async def test_tls_to_the_next_server_is_counted(test_certificates: TestCertificates) -> None:
    metrics = PrometheusMetrics()
    config = f"OutTLS: encrypt\nOutTLSCAFile: {test_certificates.ca}\n"
    with trio.fail_after(20):
        async with (
            FakeUpstream(
                tls_certificate=test_certificates.certificate, tls_key=test_certificates.key
            ) as up,
            run_proxy(config, upstream=up, metrics=metrics) as proxy,
            proxy.connect() as client,
        ):
            await client.greeting()
            replies = await client.send_message("s@x", ["r@x"], b"Subject: t\r\n\r\nbody\r\n")
            assert replies[-1].code == 250
    assert up.transactions[0].tls
    found = samples(metrics.exposition()[0])
    assert found[("proxsmtpd_tls_sessions_total", (("side", "upstream"),))] == 1
