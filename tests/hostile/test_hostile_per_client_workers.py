"""Attack 1 against `Workers: N` (issue 21, case 10): one address opening connections until
refused, on the real pre-forked process.  The workers count in one shared table
(daemon/client_table.py), so MaxConnectionsPerClient is exact whichever worker the kernel
hands a connection to (docs/behaviour.md §8.1, item 6).  Before, each worker applied its
share: with a limit of 2 and two workers, three connections gave [220, 421, 220] about
one round in four.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
from hostile_support import MESSAGE
from ops_support import ProxyProcess, free_port, proxy_process, write_config

from trio_proxsmtp.testing import FakeClient, FakeUpstream

WORKERS = 2
ROUNDS = 40  # each round failed with probability about 1/4 before: (3/4)**40 < 1e-5
REFUSAL_LOG_RE = re.compile(r"too many connections from 127\.0\.\d+\.\d+ \(max (\d+)\): refused")


async def connect_from(source: str, port: int) -> FakeClient:
    """A client connected from loopback address `source` (each round its own address, so a
    round never waits for the last one's connections to be uncounted)."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return FakeClient(trio.SocketStream(sock))


async def greeted(client: FakeClient) -> int:
    reply = await client.greeting()
    if reply.code != 220:
        assert reply.code == 421 and "4.7.0 Error: too many connections" in reply.text
        assert await client.read_eof() == b""
    return reply.code


@asynccontextmanager
async def two_workers(tmp_path: Path, limit: int) -> AsyncIterator[tuple[ProxyProcess, int]]:
    port = free_port()
    async with FakeUpstream() as up:
        config = write_config(
            tmp_path / "proxsmtpd.conf",
            f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n"
            f"TempDirectory: {tmp_path}\nWorkers: {WORKERS}\n"
            f"MaxConnectionsPerClient: {limit}\nConnectionLimitExceptions: none\n",
        )
        with proxy_process(config, tmp_path / "proxy.log") as proxy:
            await proxy.wait_log(" serving ", count=WORKERS)
            yield proxy, port
            workers = proxy.pids()[1:]
            proxy.signal(signal.SIGTERM)
            assert await proxy.wait_exit() == 0
            assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


async def test_three_connections_from_one_address_give_220_220_421_every_round(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with two_workers(tmp_path, limit=2) as (proxy, port):
            for round_ in range(ROUNDS):
                source = f"127.0.1.{round_ + 1}"
                async with AsyncExitStack() as stack:
                    codes = []
                    for _ in range(3):
                        client = await connect_from(source, port)
                        stack.push_async_callback(client.aclose)
                        codes.append(await greeted(client))
                    assert codes == [220, 220, 421], f"round {round_}"
            # The log names the whole limit, not a worker's share.
            assert set(REFUSAL_LOG_RE.findall(proxy.log())) == {"2"}


async def test_a_held_connection_leaving_makes_room_on_any_worker(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with two_workers(tmp_path, limit=3) as (_, port), AsyncExitStack() as stack:
            held = []
            for _ in range(3):
                client = await connect_from("127.0.2.1", port)
                stack.push_async_callback(client.aclose)
                assert await greeted(client) == 220
                held.append(client)
            for _ in range(6):  # whichever worker takes it
                client = await connect_from("127.0.2.1", port)
                assert await greeted(client) == 421
                await client.aclose()
            await held.pop().quit()
            # Its worker uncounts it once its session ends: retry until admitted.
            with trio.fail_after(10):
                while True:
                    client = await connect_from("127.0.2.1", port)
                    stack.push_async_callback(client.aclose)
                    if await greeted(client) == 220:
                        break
                    await trio.sleep(0.05)
            replies = await client.send_message("s@x", ["r@x"], MESSAGE)
            assert replies[-1].code == 250
            refused = await connect_from("127.0.2.1", port)
            assert await greeted(refused) == 421
            await refused.aclose()


async def test_a_killed_workers_clients_are_no_longer_counted(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with two_workers(tmp_path, limit=2) as (proxy, port):
            async with AsyncExitStack() as stack:
                for _ in range(2):
                    client = await connect_from("127.0.3.1", port)
                    stack.push_async_callback(client.aclose)
                    assert await greeted(client) == 220
                for pid in proxy.pids()[1:]:
                    os.kill(pid, signal.SIGKILL)
                await proxy.wait_log(" serving ", count=2 * WORKERS)
                # Their connections died with them, and so did their counts.
                for _ in range(2):
                    client = await connect_from("127.0.3.1", port)
                    stack.push_async_callback(client.aclose)
                    assert await greeted(client) == 220
                client = await connect_from("127.0.3.1", port)
                stack.push_async_callback(client.aclose)
                assert await greeted(client) == 421
            assert "forgot the client connections of worker pid" in proxy.log()


@pytest.mark.parametrize("limit", [1, 2])
async def test_a_limit_below_workers_is_kept_too(tmp_path: Path, limit: int) -> None:
    # Before, each worker allowed at least one: one address held max(limit, Workers).
    with trio.fail_after(60):
        async with two_workers(tmp_path, limit=limit) as (_, port), AsyncExitStack() as stack:
            codes = []
            for _ in range(limit + 6):
                client = await connect_from("127.0.4.1", port)
                stack.push_async_callback(client.aclose)
                codes.append(await greeted(client))
            assert codes == [220] * limit + [421] * 6
