"""Helpers for the attack catalogue: a filter run with clean-up checks, a proxy with a filter,
one connection on memory streams (for timeouts under the autojump clock)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.settings import relay_settings
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.connection import Connection
from trio_proxsmtp.relay.deadlines import Stress
from trio_proxsmtp.stages.filter.environment import filter_environment
from trio_proxsmtp.stages.filter.run import run_filter
from trio_proxsmtp.stages.filter.verdict import FilterVerdict
from trio_proxsmtp.stages.settings import FilterSpec, FilterType
from trio_proxsmtp.stages.spool import Spool
from trio_proxsmtp.testing import FakeUpstream, RunningProxy, run_proxy
from trio_proxsmtp.testing.client import FakeClient

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


def environment(
    directory: Path, *, sender: str = "s@x", recipients: Sequence[str] = ("a@x",)
) -> dict[str, str]:
    return filter_environment(
        client="192.0.2.7",
        server="127.0.0.1",
        sender=sender,
        recipients=recipients,
        remote=None,
        remote_helo=None,
        temp_directory=str(directory),
        base={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


async def filter_run(
    directory: Path,
    command: str,
    *,
    mode: FilterType = FilterType.PIPE,
    data: bytes = MESSAGE,
    env: Mapping[str, str] | None = None,
    size_limit: int | None = None,
    timeout: float = 20.0,
) -> tuple[FilterVerdict, bytes | None]:
    """Run a filter; return the verdict and the delivered bytes. Every file it made is gone."""
    with Spool.create(str(directory)) as spool:
        spool.write(data)
        spool.finish()
        verdict = await run_filter(
            FilterSpec(command, mode, timeout, str(directory)),
            spool,
            environment(directory) if env is None else env,
            size_limit=size_limit,
        )
        delivered = None
        if verdict.message is not None:
            delivered = b"".join(verdict.message.chunks())
            if verdict.message is not spool:
                verdict.message.close()
    assert list(directory.iterdir()) == []
    return verdict, delivered


@asynccontextmanager
async def proxied(
    config: str, up: FakeUpstream | None = None
) -> AsyncIterator[tuple[FakeUpstream, RunningProxy]]:
    """A FakeUpstream (`up`, or a default one) and the proxy in front of it; no spool file
    left at the end."""
    async with (
        FakeUpstream() if up is None else up as upstream,
        run_proxy(config, upstream=upstream) as proxy,
    ):
        yield upstream, proxy
        assert proxy.leftovers() == []


# An upstream on a memory stream: FakeUpstream.handle, or a hand-written hostile one.
UpstreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]


@asynccontextmanager
async def memory_connection(
    config: str,
    upstream: UpstreamHandler | FakeUpstream,
    *,
    client: str = "192.0.2.7",
    stress: Stress | None = None,
) -> AsyncIterator[tuple[FakeClient, Connection]]:
    """One `Connection` between a FakeClient and `upstream` on memory streams (no socket,
    so the autojump clock runs every timeout); the connection's task ends with the block."""
    handler = upstream.handle if isinstance(upstream, FakeUpstream) else upstream
    with tempfile.TemporaryDirectory(prefix="trio-proxsmtp-hostile-") as temp:
        parsed = parse_config(f"TempDirectory: {temp}\nOutAddress: 127.0.0.1:25\n{config}\n")
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:

            async def open_upstream() -> tuple[trio.abc.Stream, str]:
                proxy_end, upstream_end = trio.testing.memory_stream_pair()
                nursery.start_soon(handler, upstream_end)
                return proxy_end, "upstream.memory"

            info = ClientInfo(client=client, local="127.0.0.1")
            connection = Connection(
                relay_settings(parsed),
                theirs,
                info,
                0x100000,
                open_upstream=open_upstream,
                stress=stress,
            )
            nursery.start_soon(connection.run)
            try:
                yield FakeClient(ours, timeout=10_000), connection
            finally:
                await trio.aclose_forcefully(ours)
                nursery.cancel_scope.cancel()
        assert os.listdir(temp) == []
