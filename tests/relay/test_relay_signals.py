"""Signals belong to the command line: its signal task drives the server's stop/reload,
and a proxy started in a test never touches the process's handlers."""

from __future__ import annotations

import signal

import attrs
import trio

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.daemon.signals import handle_signals
from trio_proxsmtp.testing import FakeUpstream, run_proxy

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def test_run_proxy_leaves_the_signal_handlers_alone() -> None:
    before = [signal.getsignal(signum) for signum in HANDLED]
    with trio.fail_after(10):
        async with FakeUpstream() as up, run_proxy("", upstream=up) as proxy:
            during = [signal.getsignal(signum) for signum in HANDLED]
            async with proxy.connect() as client:
                assert (await client.greeting()).code == 220
    assert during == before
    assert [signal.getsignal(signum) for signum in HANDLED] == before


@attrs.define
class RecordingServer:
    config: object = attrs.field(factory=lambda: parse_config("OutAddress: 127.0.0.1:25"))
    draining: bool = False
    calls: list[str] = attrs.field(factory=list)

    def stop(self) -> None:
        self.calls.append("stop")
        self.draining = True

    async def reload(self) -> bool:
        self.calls.append("reload")
        return True


async def test_signal_task_calls_stop_and_reload() -> None:
    server = RecordingServer()
    send, receive = trio.open_memory_channel[int](10)
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        send.send_nowait(signum)
    send.close()
    with trio.fail_after(5):
        await handle_signals(server, receive)  # type: ignore[arg-type]
    # A SIGHUP while draining is ignored; a second SIGTERM/SIGINT ends the grace period.
    assert server.calls == ["reload", "stop", "stop"]
