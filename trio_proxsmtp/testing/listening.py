"""The listener every socket fake serves on (milter, policy service, spamd, clamd): loopback
TCP on a free port, or a unix socket at a given path, removed afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

__all__ = ["serving_on"]


@contextlib.asynccontextmanager
async def serving_on(
    handler: Callable[[trio.SocketStream], Awaitable[object]], unix_path: str | None = None
) -> AsyncIterator[str]:
    """Serve `handler`, one task per connection, on 127.0.0.1 port 0 (or `unix_path`);
    yields the address as the options write it: ``inet:127.0.0.1:PORT`` or
    ``unix:PATH``.  On exit the connections are cancelled and the listener closed."""
    if unix_path is None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        address = f"inet:127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    else:
        raw = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await raw.bind(unix_path)
        raw.listen(16)
        listeners = [trio.SocketListener(raw)]
        address = f"unix:{unix_path}"
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            try:
                yield address
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        if unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(unix_path)
