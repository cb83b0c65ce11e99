"""``/readyz`` on MetricsListen (docs/behaviour.md §11.10): may this instance take mail now?

Ready means all of: the process is not draining (SIGTERM came: a balancer must take it out
of rotation before it refuses mail, which DrainDelay leaves it time to do), the next
server answers a connection with a 2xx banner, and every configured milter accepts a
connection.  The probes are ours alone: they
never go through a session, so they make no summary line and no log line; their result is
kept for CACHE_SECONDS, so a balancer checking every second (or several of them) costs the
next server one connection per CACHE_SECONDS at most.  Draining is never cached.

What cannot be probed is left out: an OutAddress of a port only (each client's own
address) and TransparentProxy (each client's original destination).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable

import trio

from trio_proxsmtp.common.address import AddressKind
from trio_proxsmtp.config.model import Config
from trio_proxsmtp.protocol.errors import RemoteProtocolError
from trio_proxsmtp.protocol.smtp.reply_parser import ReplyParser
from trio_proxsmtp.relay.settings import OutTLSMode, TransparentMode
from trio_proxsmtp.stages.settings import MilterAddress

__all__ = ["CACHE_SECONDS", "PROBE_TIMEOUT", "Readiness", "probe_milter", "probe_upstream"]

CACHE_SECONDS = 1.5  # a probe's result is reused this long
PROBE_TIMEOUT = 2.0  # seconds for a probe (connect, banner, QUIT)


async def _open(
    kind: AddressKind, host: str | None, port: int, path: str | None
) -> trio.abc.Stream:
    if kind is AddressKind.UNIX:
        assert path is not None
        return await trio.open_unix_socket(path)
    assert host is not None
    return await trio.open_tcp_stream(host, port)


async def _reply(stream: trio.abc.Stream) -> str:
    """The next reply's last line (its code and text), or "" when the server closed; read
    by the relay's own bounded parser (a malformed reply raises RemoteProtocolError)."""
    parser = ReplyParser()
    while (reply := parser.next_reply()) is None:
        chunk = await stream.receive_some(1024)
        if not chunk:
            return ""
        parser.feed(bytes(chunk))
    return f"{reply.code} {reply.lines[-1]}"


async def probe_upstream(config: Config) -> str | None:
    """None when the next server greets with 2xx (or cannot be probed); else why not."""
    address = config.out_address
    if address is None or address.is_port_only:
        return None
    if config.transparent_proxy is not TransparentMode.OFF:
        return None
    try:
        stream = await _open(address.kind, address.host, address.port, address.path)
    except OSError as exc:
        return f"next server {address}: {exc.strerror or exc}"
    try:
        if config.out_tls is OutTLSMode.IMPLICIT and config.out_tls_context is not None:
            tls = trio.SSLStream(
                stream, config.out_tls_context, server_hostname=config.upstream_tls_hostname
            )
            await tls.do_handshake()
            stream = tls
        banner = await _reply(stream)
        if not banner.startswith("2"):
            return f"next server {address}: {banner or 'closed without a banner'}"
        await stream.send_all(b"QUIT\r\n")
        await _reply(stream)  # its 221: a polite end, no "lost connection" in its log
        return None
    except (trio.BrokenResourceError, OSError, ssl.SSLError, RemoteProtocolError) as exc:
        return f"next server {address}: {exc}"
    finally:
        await trio.aclose_forcefully(stream)


async def probe_milter(milter: MilterAddress) -> str | None:
    """None when the milter accepts a connection; else why not."""
    kind = AddressKind.UNIX if milter.path is not None else AddressKind.TCP
    try:
        stream = await _open(kind, milter.host, milter.port, milter.path)
    except OSError as exc:
        return f"milter {milter.text}: {exc.strerror or exc}"
    await trio.aclose_forcefully(stream)
    return None


class Readiness:
    """The answer of /readyz for the process serving MetricsListen."""

    def __init__(
        self,
        config: Callable[[], Config],
        draining: Callable[[], bool],
        *,
        cache: float = CACHE_SECONDS,
        timeout: float = PROBE_TIMEOUT,
        upstream: Callable[[Config], Awaitable[str | None]] = probe_upstream,
        milter: Callable[[MilterAddress], Awaitable[str | None]] = probe_milter,
    ) -> None:
        self._config = config
        self._draining = draining
        self._cache = cache
        self._timeout = timeout
        self._probe_upstream = upstream
        self._probe_milter = milter
        self._lock = trio.Lock()
        self._result: tuple[float, Config, str | None] | None = None  # (when, config, why not)
        self.probes = 0  # probe rounds run (not answered from the cache)

    async def _probe(self, config: Config) -> str | None:
        with trio.move_on_after(self._timeout):
            problem = await self._probe_upstream(config)
            for milter in config.milters:
                problem = problem or await self._probe_milter(milter)
            return problem
        return "probe timed out"

    async def check(self) -> tuple[bool, bytes]:
        """(ready, the JSON body): ``{"status": "ready"}`` or ``{"status": "not ready",
        "reason": ...}``."""
        problem = "draining" if self._draining() else await self._probed()
        if problem is None:
            return True, b'{"status":"ready"}\n'
        body = json.dumps({"status": "not ready", "reason": problem}, ensure_ascii=True)
        return False, f"{body}\n".encode("ascii")

    async def _probed(self) -> str | None:
        async with self._lock:  # one probe at a time; the others take its result
            config = self._config()
            now = trio.current_time()
            cached = self._result
            if cached is not None and cached[1] is config and now - cached[0] < self._cache:
                return cached[2]
            self.probes += 1
            problem = await self._probe(config)
            self._result = (trio.current_time(), config, problem)
            return problem
