"""The series behind the shipped alerts (issue 24, docs/behaviour.md §11.6): the next server
unusable (`upstream_connect_failures_total{reason}`), TLS handshakes failed
(`tls_handshake_failures_total{side}`), stress mode (`stress`) and workers restarted
(`worker_restarts_total`), each recorded where the event happens."""

from __future__ import annotations

import logging
import os
import signal
import ssl
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
import trio.testing
from ops_support import free_port, proxy_process, wait_for, write_config
from test_ops_metrics import (
    Samples,
    http,
    restore_multiprocess_mode,  # noqa: F401 (a fixture)
    samples,
)

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.settings import upstream_settings
from trio_proxsmtp.daemon.prometheus import MultiprocessDirectory, PrometheusMetrics
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.upstream import Upstream, UpstreamFailure
from trio_proxsmtp.testing import FakeClient, FakeUpstream, run_proxy
from trio_proxsmtp.testing.certs import TestCertificates

CONNECT = "proxsmtpd_upstream_connect_failures_total"
TLS_FAILURES = "proxsmtpd_tls_handshake_failures_total"


def connect_failures(found: Samples) -> dict[str, float]:
    return {dict(labels)["reason"]: v for (name, labels), v in found.items() if name == CONNECT}


def tls_failures(found: Samples) -> dict[str, float]:
    return {dict(labels)["side"]: v for (name, labels), v in found.items() if name == TLS_FAILURES}


async def greet_through(config: str, upstream: FakeUpstream | str) -> tuple[int, Samples]:
    """One client's greeting through a proxy with `config`; the code, and the metrics."""
    metrics = PrometheusMetrics()
    with trio.fail_after(20):
        async with run_proxy(config, upstream=upstream, metrics=metrics) as proxy:
            async with proxy.connect() as client:
                code = (await client.greeting()).code
            await wait_for(lambda: samples(metrics.exposition()[0]).get(ACTIVE) == 0)
    return code, samples(metrics.exposition()[0])


ACTIVE = ("proxsmtpd_connections_active", ())
NONE = {"refused": 0.0, "timeout": 0.0, "tls": 0.0, "banner": 0.0}


async def test_a_next_server_that_refuses_the_connection_is_counted() -> None:
    code, found = await greet_through("", f"127.0.0.1:{free_port()}")
    assert code == 421
    assert connect_failures(found) == {**NONE, "refused": 1}


async def test_a_next_server_that_never_accepts_is_counted_as_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def never() -> tuple[trio.abc.Stream, str]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    metrics = PrometheusMetrics()
    settings = upstream_settings(parse_config("OutAddress: 127.0.0.1:25\nTimeOut: 30\n"))
    log = logging.LoggerAdapter(logging.getLogger("test"), {})
    upstream = Upstream(
        settings, ClientInfo(client="127.0.0.1", local="127.0.0.1"), log, opener=never
    )
    upstream.metrics = metrics
    with pytest.raises(UpstreamFailure, match="timed out"):
        await upstream.connect()
    assert trio.current_time() >= 30
    assert connect_failures(samples(metrics.exposition()[0])) == {**NONE, "timeout": 1}


@pytest.mark.parametrize("banner", ["554 5.3.2 not now", b"garbage\r\n"])
async def test_a_next_server_without_a_2xx_banner_is_counted(banner: str | bytes) -> None:
    async with FakeUpstream(banner=banner) as up:
        code, found = await greet_through("", up)
    assert code != 220
    assert connect_failures(found) == {**NONE, "banner": 1}


async def test_a_healthy_next_server_counts_no_failure() -> None:
    async with FakeUpstream() as up:
        code, found = await greet_through("", up)
    assert code == 220
    assert connect_failures(found) == NONE
    assert tls_failures(found) == {"client": 0, "upstream": 0}


async def test_a_failed_upstream_tls_handshake_is_counted(
    test_certificates: TestCertificates,
) -> None:
    # The next server's certificate is signed by a CA we were not told to trust.
    certs = test_certificates
    async with FakeUpstream(tls_certificate=certs.certificate, tls_key=certs.key) as up:
        metrics = PrometheusMetrics()
        with trio.fail_after(20):
            async with (
                run_proxy("OutTLS: encrypt\n", upstream=up, metrics=metrics) as proxy,
                proxy.connect() as client,
            ):
                await client.greeting()
                reply = await client.command("EHLO me.example")
                assert reply.code == 421, reply
    found = samples(metrics.exposition()[0])
    assert tls_failures(found) == {"client": 0, "upstream": 1}
    assert connect_failures(found) == {**NONE, "tls": 1}
    assert found[("proxsmtpd_tls_sessions_total", (("side", "upstream"),))] == 0


async def test_a_failed_client_tls_handshake_is_counted(
    test_certificates: TestCertificates,
) -> None:
    certs = test_certificates
    config = f"TLSCertificate: {certs.certificate}\nTLSKey: {certs.key}\n"
    metrics = PrometheusMetrics()
    with trio.fail_after(20):
        async with FakeUpstream() as up, run_proxy(config, upstream=up, metrics=metrics) as proxy:
            async with proxy.connect() as client:
                await client.greeting()
                assert (await client.command("EHLO me.example")).code == 250
                untrusting = ssl.create_default_context()  # not our test CA: refuses it
                with pytest.raises(trio.BrokenResourceError):
                    await client.starttls(untrusting, "localhost")

            def counted() -> bool:
                return tls_failures(samples(metrics.exposition()[0]))["client"] == 1

            await wait_for(counted)
            async with proxy.connect() as client:  # a good handshake is not a failure
                await client.greeting()
                assert (await client.command("EHLO me.example")).code == 250
                trusting = ssl.create_default_context(cafile=str(certs.ca))
                assert (await client.starttls(trusting, "localhost")).code == 220
                await client.quit()
            await wait_for(lambda: samples(metrics.exposition()[0]).get(ACTIVE) == 0)
    found = samples(metrics.exposition()[0])
    assert tls_failures(found) == {"client": 1, "upstream": 0}
    assert found[("proxsmtpd_tls_sessions_total", (("side", "client"),))] == 1


async def test_the_stress_gauge_follows_stress_mode() -> None:
    # MaxConnections 4: stress from 3 open connections (STRESS_FRACTION), with StressTimeOut.
    metrics = PrometheusMetrics()

    def stress() -> float:
        return samples(metrics.exposition()[0])[("proxsmtpd_stress", ())]

    with trio.fail_after(20):
        async with (
            FakeUpstream() as up,
            run_proxy("MaxConnections: 4\nStressTimeOut: 60\n", upstream=up, metrics=metrics)
            as proxy,
        ):  # fmt: skip
            assert stress() == 0
            async with AsyncExitStack() as stack:
                clients: list[FakeClient] = []
                for _ in range(3):
                    client = await stack.enter_async_context(proxy.connect())
                    assert (await client.greeting()).code == 220
                    clients.append(client)
                    assert stress() == (1 if len(clients) == 3 else 0)
                await clients[0].quit()
                await wait_for(lambda: stress() == 0)
    assert stress() == 0


async def test_with_stress_timeout_off_the_gauge_stays_at_zero() -> None:
    metrics = PrometheusMetrics()
    with trio.fail_after(20):
        async with (
            FakeUpstream() as up,
            run_proxy(
                "MaxConnections: 2\nStressTimeOut: 0\n", upstream=up, metrics=metrics
            ) as proxy,
            proxy.connect() as first,
            proxy.connect() as second,
        ):
            assert (await first.greeting()).code == 220
            assert (await second.greeting()).code == 220
            assert samples(metrics.exposition()[0])[("proxsmtpd_stress", ())] == 0


@pytest.mark.usefixtures("restore_multiprocess_mode")
def test_a_dead_worker_leaves_the_stress_gauge_and_a_replaced_one_is_counted(
    tmp_path: Path,
) -> None:
    stress, restarts = ("proxsmtpd_stress", ()), ("proxsmtpd_worker_restarts_total", ())
    with MultiprocessDirectory(str(tmp_path)) as directory:
        pids = []
        for on in (True, False):
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    PrometheusMetrics(multiprocess_dir=directory.path).stress_changed(on)
                    status = 0
                finally:
                    os._exit(status)
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
            pids.append(pid)
        scraper = PrometheusMetrics(multiprocess_dir=directory.path)
        found = samples(scraper.exposition()[0])
        assert (found[stress], found[restarts]) == (1, 0)  # the highest of the workers'
        directory.worker_died(pids[0], replaced=True)
        directory.worker_died(pids[1], replaced=False)  # a stop: not a restart
        found = samples(scraper.exposition()[0])
        assert (found[stress], found[restarts]) == (0, 1)


async def _scrape(port: int) -> Samples:
    response = await http(port, b"GET /metrics HTTP/1.0\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK"), head
    return samples(body)


async def test_a_worker_killed_and_restarted_is_counted_by_the_supervisor(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"  # the supervisor's metrics directory goes here ($TMPDIR)
    temp.mkdir()
    port, metrics_port = free_port(), free_port()
    restarts = ("proxsmtpd_worker_restarts_total", ())
    with trio.fail_after(60):
        async with FakeUpstream() as up:
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n"
                f"TempDirectory: {tmp_path}\nMetricsListen: 127.0.0.1:{metrics_port}\n"
                "Workers: 2\n",
            )
            with proxy_process(config, tmp_path / "proxy.log", env={"TMPDIR": str(temp)}) as proxy:
                await proxy.wait_log(" serving ", count=2)
                assert (await _scrape(metrics_port))[restarts] == 0
                _supervisor, *workers = proxy.pids()
                assert len(workers) == 2
                os.kill(workers[-1], signal.SIGKILL)
                await proxy.wait_log("starting a new one")
                await proxy.wait_log(" serving ", count=3)
                assert (await _scrape(metrics_port))[restarts] == 1
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
                assert "starting a new one" in proxy.log()
    assert list(temp.iterdir()) == []
