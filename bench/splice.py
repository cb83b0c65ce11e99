"""A bare Trio byte splice: the floor for the CPU per message of one proxy process.

    python bench/splice.py LISTEN_PORT UPSTREAM_PORT

Accepts on 127.0.0.1:LISTEN_PORT and, for each client, connects to 127.0.0.1:UPSTREAM_PORT and
copies bytes both ways until each side has sent EOF; no SMTP parsing, no filter, no spool, no
logging, no timeouts.  bench/run.py runs it as its own process and measures it exactly like
the proxy (same load, same sink, CPU time from /proc), so the difference between the two is
what our SMTP handling costs on top of moving the same bytes with Trio.
"""

from __future__ import annotations

import contextlib
import sys

import trio

CHUNK = 65536  # the proxy's receive size


async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    """Copy until `source` reaches EOF, then pass the EOF on."""
    try:
        while data := await source.receive_some(CHUNK):
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def handle(client: trio.SocketStream, upstream_port: int) -> None:
    async with client:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
        except OSError:
            return
        async with upstream, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)


async def main(listen_port: int, upstream_port: int) -> None:
    listeners = await trio.open_tcp_listeners(listen_port, host="127.0.0.1", backlog=4096)
    async with trio.open_nursery() as nursery:

        async def serve(listener: trio.SocketListener) -> None:
            async with listener:
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(handle, stream, upstream_port)

        for listener in listeners:
            nursery.start_soon(serve, listener)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main, int(sys.argv[1]), int(sys.argv[2]))
