"""Run the proxy in-process on an ephemeral port, to test a filter in a few lines.

Example: a pytest-trio test (``trio_mode = true``) of a filter that tags the subject::

    import trio
    from trio_proxsmtp.testing import FakeUpstream, run_proxy

    async def test_my_filter_tags_subject():
        with trio.fail_after(30):
            async with FakeUpstream() as up, run_proxy(
                "FilterCommand: sed 's/^Subject: /Subject: [tagged] /'", upstream=up
            ) as proxy, proxy.connect() as client:
                message = b"Subject: hi\\r\\n\\r\\nyo\\r\\n"
                replies = await client.send_message("a@x", ["b@x"], message)
                assert replies[-1].code == 250
                assert up.transactions[0].message.startswith(b"Subject: [tagged] hi")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial

import attrs

from trio_proxsmtp.common.address import Address, AddressKind, parse_address
from trio_proxsmtp.common.metrics import NULL_METRICS, Metrics
from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.model import DEFAULT_OUT_PORT, Config
from trio_proxsmtp.testing.client import DEFAULT_TIMEOUT, FakeClient, open_client
from trio_proxsmtp.testing.upstream import FakeUpstream, background_nursery

__all__ = ["RunningProxy", "run_proxy"]

_LOOPBACK_ANY_PORT = Address(
    kind=AddressKind.TCP, host="127.0.0.1", port=0, path=None, text="127.0.0.1:0"
)
_DEFAULT_TEMP_DIRECTORY = attrs.fields(Config).temp_directory.default


@attrs.frozen
class RunningProxy:
    """A proxy started by :func:`run_proxy`; where it listens and how it was configured."""

    config: Config
    """The configuration actually served (Listen, OutAddress, TempDirectory filled in)."""
    host: str
    """"127.0.0.1", or the socket path when listening on a Unix socket."""
    port: int
    """The TCP port; 0 for a Unix socket."""
    tls_port: int | None = None
    """The ListenTLS port (TLS from the first byte), when the config has one: forced to
    127.0.0.1 on a free port like Listen."""

    @property
    def temp_directory(self) -> str:
        return self.config.temp_directory

    def leftovers(self) -> list[str]:
        """Spool files still in TempDirectory or still open: [] once every message is done.

        The proxy runs in this process, so its open descriptors are ours to see: an unnamed
        (O_TMPFILE) spool never shows in the directory, only as an open file below it.
        """
        directory = os.path.realpath(self.temp_directory)
        try:
            found = [os.path.join(directory, name) for name in os.listdir(directory)]
        except FileNotFoundError:  # nothing can be left in a directory that is not there
            found = []
        open_fds = os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []
        for fd in open_fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith(directory + "/") and target not in found:
                    found.append(target)
        return found

    def connect(
        self, *, timeout: float = DEFAULT_TIMEOUT, proxy_header: bytes | None = None
    ) -> AbstractAsyncContextManager[FakeClient]:
        """``async with proxy.connect() as client``: a :class:`FakeClient` to the proxy
        (``proxy_header``: sent first, see :func:`open_client`)."""
        if self.config.listen.kind is AddressKind.UNIX:
            return open_client(self.host, timeout=timeout, proxy_header=proxy_header)
        return open_client(self.host, self.port, timeout=timeout, proxy_header=proxy_header)


def _target(upstream: FakeUpstream | str) -> str:
    return upstream.address if isinstance(upstream, FakeUpstream) else upstream


@asynccontextmanager
async def run_proxy(
    config: Config | str,
    *,
    upstream: FakeUpstream | str | None = None,
    metrics: Metrics | None = None,
) -> AsyncIterator[RunningProxy]:
    """Serve ``config`` (a Config or proxsmtpd.conf text) until the block ends.

    ``metrics`` (e.g. a ``metrics.PrometheusMetrics()``) records what the proxy does, to be
    read with its ``exposition()``; MetricsListen in the config is not served here.

    Listen is forced to 127.0.0.1 on a free port (a Unix socket path is kept). OutAddress
    becomes ``upstream`` (a FakeUpstream or an address in config syntax) when given. When
    the config leaves TempDirectory at its default, a fresh temporary directory is used and
    removed afterwards (a Config object that sets "/tmp/" explicitly counts as default).
    """
    # Imported here so that the fakes stay importable without the whole server.
    from trio_proxsmtp.daemon.listeners import bind_listeners, is_tls_listener
    from trio_proxsmtp.daemon.server import serve

    temp_directory = tempfile.mkdtemp(prefix="trio-proxsmtp-test-")
    try:
        if isinstance(config, str):
            # Our TempDirectory goes first so that the text can still override it; the
            # upstream goes last so that it wins over the text's OutAddress.
            text = f"TempDirectory: {temp_directory}\n{config}\n"
            if upstream is not None:
                text += f"OutAddress: {_target(upstream)}\n"
            config = parse_config(text)
        else:
            if upstream is not None:
                config = attrs.evolve(
                    config, out_address=parse_address(_target(upstream), DEFAULT_OUT_PORT)
                )
            if config.temp_directory == _DEFAULT_TEMP_DIRECTORY:
                config = attrs.evolve(config, temp_directory=temp_directory)
        if config.listen.kind is not AddressKind.UNIX:
            config = attrs.evolve(config, listen=_LOOPBACK_ANY_PORT)
        if config.listen_tls is not None and config.listen_tls.kind is not AddressKind.UNIX:
            config = attrs.evolve(config, listen_tls=_LOOPBACK_ANY_PORT)

        sockets = bind_listeners(config)
        try:
            if config.listen.kind is AddressKind.UNIX:
                host, port = os.fspath(sockets[0].getsockname()), 0
            else:
                host, port = sockets[0].getsockname()[:2]
            tls_port = next(
                (
                    s.getsockname()[1]
                    for s in sockets
                    if is_tls_listener(s) and s.family != socket.AF_UNIX
                ),
                None,
            )
            async with background_nursery() as nursery:
                await nursery.start(
                    partial(serve, config, sockets, metrics=metrics or NULL_METRICS)
                )
                yield RunningProxy(config=config, host=host, port=port, tls_port=tls_port)
        finally:
            for sock in sockets:
                sock.close()
    finally:
        shutil.rmtree(temp_directory, ignore_errors=True)
