"""Our PROXY header reader against a real HAProxy (contrib/haproxy/haproxy.cfg).

A bare SMTP responder stands behind HAProxy in place of the proxy: what HAProxy sends it,
v1 or v2, must be read by proxy_protocol.read_proxy_header as the real client's address,
and HAProxy's health checks (option smtpchk) must read as such.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from haproxy_support import HAPROXY_CFG, check_config, haproxy_config, run_haproxy

from trio_proxsmtp.common.networks import DEFAULT_TRUSTED_NETWORKS
from trio_proxsmtp.daemon.proxy_protocol import read_proxy_header
from trio_proxsmtp.protocol.proxy_header import ProxyCommand, ProxyFamily
from trio_proxsmtp.relay.client_info import ProxyResult

pytestmark = pytest.mark.integration


def test_shipped_config_is_valid() -> None:
    result = check_config(HAPROXY_CFG)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
def test_test_config_is_valid(tmp_path: Path, send_proxy: str) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(2525, [2526, 2527], send_proxy=send_proxy))
    result = check_config(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{send_proxy} check" in config.read_text()


class Backend:
    """Reads each connection's PROXY header, then speaks just enough SMTP for smtpchk."""

    def __init__(self) -> None:
        self.results: list[ProxyResult] = []
        self.changed = trio.Event()

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            peer = stream.socket.getpeername()[0]
            result = await read_proxy_header(
                stream, peer, DEFAULT_TRUSTED_NETWORKS, trio.current_time() + 5
            )
            self.results.append(result)
            self.changed.set()
            self.changed = trio.Event()
            buffer = result.remainder
            try:
                await stream.send_all(b"220 backend ESMTP\r\n")
                while True:
                    while b"\r\n" not in buffer:
                        data = await stream.receive_some()
                        if not data:
                            return
                        buffer += data
                    line, _, buffer = buffer.partition(b"\r\n")
                    if line.upper().startswith(b"QUIT"):
                        await stream.send_all(b"221 bye\r\n")
                        return
                    await stream.send_all(b"250 backend\r\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def wait_for(self, wanted: Callable[[ProxyResult], bool]) -> ProxyResult:
        while True:
            for result in self.results:
                if wanted(result):
                    return result
            await self.changed.wait()


@pytest.mark.parametrize(("send_proxy", "version"), [("send-proxy-v2", 2), ("send-proxy", 1)])
async def test_haproxy_header_is_read_as_the_real_client(
    tmp_path: Path, send_proxy: str, version: int
) -> None:
    backend = Backend()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, backend.handle, 0, host="127.0.0.1")
            )
            backend_port = listeners[0].socket.getsockname()[1]
            async with run_haproxy(tmp_path, [backend_port], send_proxy=send_proxy) as front:
                if version == 2:
                    # v2 checks say LOCAL (v1 ones carry the check's own addresses).
                    check = await backend.wait_for(lambda r: r.is_health_check)
                    assert check.is_health_check and check.client is None
                client = await trio.open_tcp_stream("127.0.0.1", front)
                async with client:
                    client_port = client.socket.getsockname()[1]
                    assert (await client.receive_some()).startswith(b"220 backend")
                    await client.send_all(b"QUIT\r\n")
                    assert (await client.receive_some()).startswith(b"221")
                proxied = await backend.wait_for(
                    lambda r: r.client is not None and r.client.client_port == client_port
                )
            nursery.cancel_scope.cancel()
    assert proxied.header.version == version
    assert proxied.header.family is ProxyFamily.INET
    assert proxied.client is not None
    assert proxied.header.command is ProxyCommand.PROXY
    assert proxied.client.client_address == "127.0.0.1"
    assert (proxied.client.destination_address, proxied.client.destination_port) == (
        "127.0.0.1",
        front,
    )
    assert proxied.remainder == b""  # HAProxy sends nothing of the client's before our 220
