"""The relay on memory streams: a Connection between a FakeClient and a FakeUpstream with
no socket, so that timeouts run under the autojump clock and nothing touches the network."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import attrs
import trio
import trio.testing

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.config.settings import relay_settings
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.connection import Connection
from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.client import DEFAULT_TIMEOUT, FakeClient

CLIENT = ClientInfo(client="127.0.0.1", local="127.0.0.1")


@attrs.define
class MemoryProxy:
    """Like testing.RunningProxy: `connect()` gives a client of a new Connection."""

    config: Config
    up: FakeUpstream
    nursery: trio.Nursery
    connections: list[Connection] = attrs.field(factory=list)

    def leftovers(self) -> list[str]:
        return os.listdir(self.config.temp_directory)

    @asynccontextmanager
    async def _connect(self, timeout: float) -> AsyncIterator[FakeClient]:
        ours, theirs = trio.testing.memory_stream_pair()

        async def open_upstream() -> tuple[trio.abc.Stream, str]:
            proxy_end, upstream_end = trio.testing.memory_stream_pair()
            self.nursery.start_soon(self.up.handle, upstream_end, CLIENT.client)
            return proxy_end, "upstream.memory"

        connection = Connection(
            relay_settings(self.config),
            theirs,
            CLIENT,
            0x100000 + len(self.connections),
            open_upstream=open_upstream,
        )
        self.connections.append(connection)
        self.nursery.start_soon(connection.run)
        try:
            yield FakeClient(ours, timeout=timeout)
        finally:
            await trio.aclose_forcefully(ours)

    def connect(
        self, *, timeout: float = DEFAULT_TIMEOUT
    ) -> AbstractAsyncContextManager[FakeClient]:
        return self._connect(timeout)


@asynccontextmanager
async def memory_proxied(
    config: str = "", up: FakeUpstream | None = None
) -> AsyncIterator[tuple[FakeUpstream, MemoryProxy]]:
    """The memory twin of test_relay_session.proxied: the temp directory must end empty."""
    temp_directory = tempfile.mkdtemp(prefix="trio-proxsmtp-test-")
    try:
        parsed = parse_config(
            f"TempDirectory: {temp_directory}\nOutAddress: 127.0.0.1:25\n{config}\n"
        )
        upstream = FakeUpstream() if up is None else up
        async with trio.open_nursery() as nursery:
            proxy = MemoryProxy(parsed, upstream, nursery)
            yield upstream, proxy
            nursery.cancel_scope.cancel()
        assert proxy.leftovers() == []
    finally:
        shutil.rmtree(temp_directory, ignore_errors=True)
