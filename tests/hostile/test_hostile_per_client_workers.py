"""Attack 1 against `Workers: N`: one address opening connections until refused, on the real
pre-forked process.  Each worker counts only its own connections and applies its share of
MaxConnectionsPerClient (at least one), so one address holds at most
max(MaxConnectionsPerClient, Workers) connections in all (docs/behaviour.md, "Limits").

The kernel decides which worker takes a connection, so the tests never assume one: they
open connections until the documented bound is held (retrying the ones a full worker
refuses), and once it is held every worker is at its share and any new connection is
refused, whichever worker takes it.
"""

from __future__ import annotations

import re
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from hostile_support import MESSAGE
from ops_support import free_port, proxy_process, write_config

from trio_proxsmtp.daemon.admission import worker_client_share
from trio_proxsmtp.testing import FakeClient, FakeUpstream, open_client

WORKERS = 2
REFUSED = b"421 4.7.0 Error: too many connections from 127.0.0.1\r\n"
REFUSAL_LOG_RE = re.compile(r"too many connections from 127\.0\.0\.1 \(max (\d+)\): refused")
ATTEMPTS = 200  # connections tried to fill a worker's share before giving up


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_every_worker_allows_at_least_one_and_the_shares_add_up_to_the_bound(
    workers: int,
) -> None:
    for limit in range(1, 12):
        shares = [worker_client_share(limit, k, workers) for k in range(workers)]
        assert min(shares) >= 1  # never a worker that refuses the address outright
        assert max(shares) - min(shares) <= 1
        assert sum(shares) == max(limit, workers)
    assert [worker_client_share(0, k, workers) for k in range(workers)] == [0] * workers


async def connect(stack: AsyncExitStack, port: int) -> FakeClient | None:
    """A connection from 127.0.0.1: the client if greeted with 220; None if it got the
    per-client refusal (and was closed by the proxy)."""
    client = await stack.enter_async_context(open_client("127.0.0.1", port))
    reply = await client.greeting()
    if reply.code == 220:
        return client
    assert reply.to_bytes() == REFUSED
    assert await client.read_eof() == b""
    await client.aclose()
    return None


async def fill_to(stack: AsyncExitStack, port: int, held: list[FakeClient], bound: int) -> None:
    """Open connections until `bound` are held; never more than `bound` are greeted."""
    for _ in range(ATTEMPTS):
        if len(held) == bound:
            return
        client = await connect(stack, port)
        if client is not None:
            held.append(client)
        assert len(held) <= bound
    raise AssertionError(f"only {len(held)} of {bound} connections held after {ATTEMPTS} tries")


@pytest.mark.parametrize("limit", [1, 3])
async def test_one_address_holds_at_most_its_bound_across_workers(
    tmp_path: Path, limit: int
) -> None:
    bound = max(limit, WORKERS)  # documented: each worker's share is at least one
    with trio.fail_after(60):
        async with FakeUpstream() as up:
            port = free_port()
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n"
                f"TempDirectory: {tmp_path}\nWorkers: {WORKERS}\n"
                f"MaxConnectionsPerClient: {limit}\nConnectionLimitExceptions: none\n",
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log(" serving ", count=WORKERS)
                workers = proxy.pids()[1:]
                assert len(workers) == WORKERS
                async with AsyncExitStack() as stack:
                    held: list[FakeClient] = []
                    await fill_to(stack, port, held, bound)
                    # Every worker holds its share now: whichever takes the next, refuses.
                    for _ in range(10 * WORKERS):
                        assert await connect(stack, port) is None
                    assert up.active_connections == bound  # the refused never went upstream

                    # One leaves: its worker has room again, and a retry gets in.
                    await held.pop().quit()
                    await fill_to(stack, port, held, bound)
                    replies = await held[-1].send_message("s@x", ["r@x"], MESSAGE)
                    assert replies[-1].code == 250
                    assert await connect(stack, port) is None
                    for client in held:
                        await client.quit()
                # Each worker names its own share in the log.
                maxima = {int(m) for m in REFUSAL_LOG_RE.findall(proxy.log())}
                shares = {worker_client_share(limit, k, WORKERS) for k in range(WORKERS)}
                assert maxima and maxima <= shares
                proxy.signal(signal.SIGTERM)
                assert await proxy.wait_exit() == 0
                assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert len(up.transactions) == 1
