"""/healthz and /readyz on MetricsListen (docs/behaviour.md §11.10): the readiness rules
with a mock clock, the real probes against the fakes, and the real daemon draining."""

from __future__ import annotations

import json
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
import trio.testing
from ops_support import free_port, proxy_process, wait_for, write_config

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.options import parse_milter_address
from trio_proxsmtp.daemon.metrics_http import MetricsResponder
from trio_proxsmtp.daemon.prometheus import PrometheusMetrics
from trio_proxsmtp.daemon.readiness import CACHE_SECONDS, Readiness, probe_milter, probe_upstream
from trio_proxsmtp.testing import FakeUpstream, open_client
from trio_proxsmtp.testing.fake_milter import FakeMilter

MESSAGE = b"From: s@x\r\nSubject: t\r\n\r\nbody\r\n"


class Probes:
    """Stand-in probes that count their calls and answer what the test says."""

    def __init__(self) -> None:
        self.upstream: str | None = None
        self.milter: str | None = None
        self.calls = 0

    async def probe_upstream(self, config: object) -> str | None:
        self.calls += 1
        await trio.sleep(0.1)
        return self.upstream

    async def probe_milter(self, milter: object) -> str | None:
        await trio.sleep(0.1)
        return self.milter


def readiness(probes: Probes, draining: list[bool], milters: str = "") -> Readiness:
    config = parse_config(f"OutAddress: 127.0.0.1:10026\n{milters}")
    return Readiness(
        lambda: config,
        lambda: draining[0],
        upstream=probes.probe_upstream,
        milter=probes.probe_milter,
    )


async def test_ready_probes_are_cached_and_draining_is_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probes, draining = Probes(), [False]
    ready = readiness(probes, draining)
    assert await ready.check() == (True, b'{"status":"ready"}\n')
    probes.upstream = "next server 127.0.0.1:10026: Connection refused"
    # Within the cache: the same answer, no new probe, even for several at once.
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ready.check)
    assert (await ready.check())[0] is True and probes.calls == 1
    await trio.sleep(CACHE_SECONDS)
    ok, body = await ready.check()
    assert not ok and probes.calls == 2
    assert json.loads(body) == {
        "status": "not ready",
        "reason": "next server 127.0.0.1:10026: Connection refused",
    }
    # Draining: at once, without a probe.
    probes.upstream = None
    draining[0] = True
    ok, body = await ready.check()
    assert not ok and json.loads(body)["reason"] == "draining" and probes.calls == 2


async def test_a_milter_that_is_down_makes_it_not_ready(
    autojump_clock: trio.testing.MockClock,
) -> None:
    probes, draining = Probes(), [False]
    probes.milter = "milter inet:127.0.0.1:8891: Connection refused"
    ready = readiness(probes, draining, "Milters: inet:127.0.0.1:8891\n")
    ok, body = await ready.check()
    assert not ok and json.loads(body)["reason"].startswith("milter inet:127.0.0.1:8891")


async def test_a_probe_that_hangs_is_a_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async def hang(config: object) -> str | None:
        await trio.sleep_forever()
        raise AssertionError

    config = parse_config("OutAddress: 127.0.0.1:10026\n")
    ready = Readiness(lambda: config, lambda: False, upstream=hang)
    start = trio.current_time()
    ok, body = await ready.check()
    assert not ok and json.loads(body)["reason"] == "probe timed out"
    assert trio.current_time() - start == pytest.approx(2.0)


async def ask(responder: MetricsResponder, request: bytes) -> bytes:
    server, client = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder.handle, server)
        await client.send_all(request)
        response = b""
        while data := await client.receive_some():
            response += data
    return response


async def test_the_endpoints_over_http(autojump_clock: trio.testing.MockClock) -> None:
    probes, draining = Probes(), [False]
    responder = MetricsResponder(PrometheusMetrics().exposition, health=readiness(probes, draining))
    healthz = await ask(responder, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert healthz.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"Content-Type: application/json\r\n" in healthz
    assert healthz.endswith(b'\r\n\r\n{"status":"ok"}\n')
    assert (await ask(responder, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
        b"HTTP/1.0 200 OK\r\n"
    )
    draining[0] = True
    not_ready = await ask(responder, b"GET /readyz HTTP/1.0\r\n\r\n")
    assert not_ready.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert not_ready.endswith(b'{"status": "not ready", "reason": "draining"}\n')
    assert (await ask(responder, b"HEAD /healthz HTTP/1.0\r\n\r\n")).endswith(b"\r\n\r\n")
    metrics = await ask(responder, b"GET /metrics HTTP/1.0\r\n\r\n")
    assert metrics.startswith(b"HTTP/1.0 200 ") and b"proxsmtpd_messages_total" in metrics
    assert (await ask(responder, b"GET /other HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 404 ")


async def test_the_real_probes_against_the_fakes() -> None:
    with trio.fail_after(10):
        async with FakeUpstream() as up:
            config = parse_config(f"OutAddress: {up.address}\n")
            assert await probe_upstream(config) is None
            await up.wait_until(lambda: up.active_connections == 0)
            assert b"QUIT" in up.commands  # a polite end: no "lost connection" upstream
        async with FakeUpstream(banner="421 4.3.2 not now") as up:
            config = parse_config(f"OutAddress: {up.address}\n")
            assert await probe_upstream(config) == f"next server {up.address}: 421 4.3.2 not now"
        # Not a reply at all, though it starts with a "2": not ready (the relay's parser).
        async with FakeUpstream(banner="2oops") as up:
            config = parse_config(f"OutAddress: {up.address}\n")
            reason = await probe_upstream(config) or ""
            assert reason.startswith(f"next server {up.address}: malformed upstream reply")
        port = free_port()
        config = parse_config(f"OutAddress: 127.0.0.1:{port}\n")
        assert (await probe_upstream(config) or "").startswith(f"next server 127.0.0.1:{port}: ")
        milter = FakeMilter()
        async with milter.serving() as address:
            assert await probe_milter(parse_milter_address(address)) is None
        refused = parse_milter_address(f"inet:127.0.0.1:{port}")
        assert (await probe_milter(refused) or "").startswith(f"milter inet:127.0.0.1:{port}: ")
    # Unprobeable: each client's own address.
    assert await probe_upstream(parse_config("OutAddress: 10026\n")) is None


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        response = b""
        while data := await stream.receive_some():
            response += data
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


# With Workers the message in flight may be on a worker other than worker 0, which serves
# /readyz: worker 0 then stays until that worker is done (daemon/siblings.py; the test
# below makes sure of that case).
@pytest.mark.parametrize(("workers", "delay"), [(1, 0), (2, 0), (2, 2)])
async def test_the_daemon_is_unready_while_it_drains(
    tmp_path: Path, workers: int, delay: int
) -> None:
    """SIGTERM with a message in flight: /readyz says 503 draining at once, /healthz 200,
    until the message is done and the process exits.  No summary line for the probes."""
    port, metrics_port = free_port(), free_port()
    with trio.fail_after(40):
        async with FakeUpstream() as up:
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n"
                f"TempDirectory: {tmp_path}\nMetricsListen: 127.0.0.1:{metrics_port}\n"
                f"Workers: {workers}\nShutdownTimeout: 30\nDrainDelay: {delay}\n",
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(f"metrics on http://127.0.0.1:{metrics_port}/metrics")
                await proxy.wait_log(" serving " if workers > 1 else "listening on", workers)
                assert await http_get(metrics_port, "/healthz") == (200, b'{"status":"ok"}\n')
                assert await http_get(metrics_port, "/readyz") == (200, b'{"status":"ready"}\n')
                async with open_client("127.0.0.1", port) as client:
                    replies = await client.start_message("s@x", ["r@x"])
                    assert replies[-1].code == 354
                    await client.send(b"Subject: t\r\n\r\nhalf a bo")
                    proxy.signal(signal.SIGTERM)
                    await proxy.wait_log("still accepting for" if delay else "shutting down: ")

                    async def draining() -> bool:
                        code, body = await http_get(metrics_port, "/readyz")
                        return code == 503 and json.loads(body)["reason"] == "draining"

                    while not await draining():
                        await trio.sleep(0.05)
                    assert (await http_get(metrics_port, "/healthz"))[0] == 200
                    await client.send(b"dy\r\n.\r\n")
                    assert (await client.read_reply()).code == 250
                assert await proxy.wait_exit() == 0
    log = proxy.log()
    assert log.count("client=") == 1  # the message; the probes made none
    assert log.count("metrics on ") == 1
    assert len(up.transactions) == 1


async def test_readyz_says_when_the_next_server_is_down(tmp_path: Path) -> None:
    port, metrics_port, dead = free_port(), free_port(), free_port()
    config = write_config(
        tmp_path / "proxsmtpd.conf",
        f"Listen: 127.0.0.1:{port}\nOutAddress: 127.0.0.1:{dead}\n"
        f"TempDirectory: {tmp_path}\nMetricsListen: 127.0.0.1:{metrics_port}\nWorkers: 1\n",
    )
    with trio.fail_after(20), proxy_process(config, tmp_path / "proxy.log") as proxy:
        await proxy.started()
        await wait_for(lambda: "metrics on " in proxy.log())
        code, body = await http_get(metrics_port, "/readyz")
        assert code == 503
        assert json.loads(body)["reason"].startswith(f"next server 127.0.0.1:{dead}: ")
        assert (await http_get(metrics_port, "/healthz"))[0] == 200
        lines_before = proxy.log().count("\n")
        for _ in range(5):
            await http_get(metrics_port, "/readyz")
        await trio.sleep(0.2)
        assert proxy.log().count("\n") == lines_before  # no log noise


def _records(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


async def test_worker_0_answers_probes_while_another_worker_drains(tmp_path: Path) -> None:
    """Workers 2, no DrainDelay, the message in flight on worker 1: worker 0 has nothing to
    finish, but it keeps /healthz (200) and /readyz (503 draining) up until worker 1 is
    done (daemon/siblings.py); before, it exited at once and the probes were refused."""
    port, metrics_port = free_port(), free_port()
    with trio.fail_after(40):
        async with FakeUpstream() as up:
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n"
                f"TempDirectory: {tmp_path}\nMetricsListen: 127.0.0.1:{metrics_port}\n"
                "Workers: 2\nShutdownTimeout: 30\nLogFormat: json\n",
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                async with AsyncExitStack() as stack:
                    await proxy.wait_log(" serving ", 2)
                    held = None
                    for _ in range(40):  # the kernel picks the worker: until worker 1 has one
                        client = await stack.enter_async_context(open_client("127.0.0.1", port))
                        assert (await client.start_message("s@x", ["r@x"]))[-1].code == 354
                        accepted = [
                            r
                            for r in _records(proxy.log())
                            if str(r["msg"]).startswith("accepted connection")
                        ]
                        if accepted[-1]["worker"] == 1:
                            held = client
                            break
                        await client.aclose()
                    assert held is not None, "no connection reached worker 1"
                    await held.send(b"Subject: t\r\n\r\nhalf a bo")
                    proxy.signal(signal.SIGTERM)

                    def worker_0_done() -> bool:
                        return any(
                            r["worker"] == 0 and r["msg"] == "shut down"
                            for r in _records(proxy.log())
                        )

                    await wait_for(worker_0_done)
                    await trio.sleep(0.5)  # before, worker 0 had exited by now
                    code, body = await http_get(metrics_port, "/readyz")
                    assert code == 503 and json.loads(body)["reason"] == "draining"
                    assert (await http_get(metrics_port, "/healthz"))[0] == 200
                    await held.send(b"dy\r\n.\r\n")
                    assert (await held.read_reply()).code == 250
                    await held.aclose()
                    assert await proxy.wait_exit() == 0
    assert len(up.transactions) == 1
