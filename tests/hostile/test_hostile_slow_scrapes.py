"""Attack (issue 21, item 3): scrapes starve.  60 connections to MetricsListen that each send
a partial request and then one byte a second held every place (8 at most, each for the
10 s deadline of a whole exchange), and every real scrape got a connection reset: Prometheus
marked the target down.  Now a request must be read within REQUEST_TIMEOUT (3 s) of the
connection's start, at most MAX_CONNECTIONS (32) connections are held, and a newcomer takes
the place of the oldest one still sending its request (docs/behaviour.md, section 11.6)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_proxsmtp.common.address import Address, AddressKind
from trio_proxsmtp.daemon.metrics_http import (
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT,
    MetricsResponder,
    serve_metrics,
)
from trio_proxsmtp.daemon.prometheus import PrometheusMetrics, bind_metrics_listener

ATTACKERS = 60
PARTIAL = b"GET /metrics HTTP/1.0\r\nX-Slow: "
SCRAPE = b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n"


async def read_all(stream: trio.abc.Stream) -> bytes:
    response = b""
    while data := await stream.receive_some():
        response += data
    return response


async def dribble(stream: trio.abc.Stream) -> None:
    """The partial request, then one byte a second until the proxy closes the connection."""
    try:
        await stream.send_all(PARTIAL)
        while True:
            await trio.sleep(1)
            await stream.send_all(b"a")
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_a_dribbled_request_ends_a_few_seconds_after_the_connect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert REQUEST_TIMEOUT <= 5  # "a few seconds"; it was 10 s for the whole exchange
    responder = MetricsResponder(PrometheusMetrics().exposition)
    server, client = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dribble, client)
        start = trio.current_time()
        await responder.handle(server)  # the bytes keep coming: they do not extend it
        assert trio.current_time() - start == pytest.approx(REQUEST_TIMEOUT)
        assert await client.receive_some() == b""  # closed unanswered
        nursery.cancel_scope.cancel()


async def test_sixty_dribbling_connections_do_not_keep_a_scrape_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    responder = MetricsResponder(PrometheusMetrics().exposition)
    held: list[float] = []  # how long the proxy kept each dribbling connection
    most_held = 0

    async def serve(stream: trio.abc.Stream, durations: list[float]) -> None:
        start = trio.current_time()
        await responder.handle(stream)
        durations.append(trio.current_time() - start)

    async def attacker(nursery: trio.Nursery) -> None:
        while True:  # reconnects as soon as it is closed, so 60 are always open
            server, client = trio.testing.memory_stream_pair()
            nursery.start_soon(serve, server, held)
            await dribble(client)

    async def watch() -> None:
        nonlocal most_held
        while True:
            most_held = max(most_held, responder.held)
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        for _ in range(ATTACKERS):
            nursery.start_soon(attacker, nursery)
            await trio.sleep(0.05)
        for _ in range(5):
            await trio.sleep(1.3)
            server, client = trio.testing.memory_stream_pair()
            answered: list[float] = []
            nursery.start_soon(serve, server, answered)
            start = trio.current_time()
            await client.send_all(SCRAPE)
            response = await read_all(client)
            assert response.startswith(b"HTTP/1.0 200 OK\r\n"), response
            assert b"proxsmtpd_connections_active" in response
            assert trio.current_time() - start < 0.01  # at once: no place to wait for
        nursery.cancel_scope.cancel()
    assert held and max(held) <= REQUEST_TIMEOUT + 0.01  # the whole request, not per byte
    assert most_held <= MAX_CONNECTIONS  # the descriptors it may take
    assert responder.evicted > 0 and responder.refused == 0


async def test_sixty_dribblers_on_loopback_and_every_scrape_answered() -> None:
    """The attack as reported, on a real listener (real time, about 6 s)."""
    sockets = bind_metrics_listener(Address(AddressKind.TCP, "127.0.0.1", 0, None, "x"))
    answers: list[bytes] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            ((_, port),) = await nursery.start(
                serve_metrics, sockets, PrometheusMetrics().exposition
            )

            async def attacker() -> None:
                while True:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                    except OSError:
                        await trio.sleep(0.1)
                        continue
                    async with stream:
                        await dribble(stream)

            for _ in range(ATTACKERS):
                nursery.start_soon(attacker)
            await trio.sleep(1.5)  # every place taken by now, under the old bound too
            for _ in range(4):
                try:
                    with trio.fail_after(2):
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                        async with stream:
                            await stream.send_all(SCRAPE)
                            answers.append(await read_all(stream))
                except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
                    answers.append(repr(exc).encode())  # the old code: connection reset
                await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert [a[:17] for a in answers] == [b"HTTP/1.0 200 OK\r\n"] * 4, answers


async def test_a_broken_exposition_is_a_500_and_the_listener_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """worker 0's event loop also serves mail: nothing in a scrape may end it."""
    calls = 0

    def exposition() -> tuple[bytes, str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("a worker's metrics file vanished")
        return b"ok 1\n", "text/plain"

    responder = MetricsResponder(exposition)
    responses = []
    for _ in range(2):
        server, client = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(responder.handle, server)
            await client.send_all(SCRAPE)
            responses.append(await read_all(client))
    assert responses[0].startswith(b"HTTP/1.0 500 ")
    assert responses[1].startswith(b"HTTP/1.0 200 OK") and responses[1].endswith(b"ok 1\n")
    assert "couldn't build the exposition" in caplog.text
