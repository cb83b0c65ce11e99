"""The fake scanners on memory streams: `connect` of the scanner clients is replaced by
one that hands each connection to a fake's `handle`, so that the autojump clock drives
every timeout and nothing touches the network."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import trio
import trio.testing

from trio_proxsmtp.stages.scanners import clamd, link, spamd
from trio_proxsmtp.stages.settings import MilterAddress
from trio_proxsmtp.testing.fake_scanners import FakeClamd, FakeSpamd

SPAMD = "spamd:inet:spamd.test:783"
CLAMD = "clamd:inet:clamd.test:3310"
BLACKHOLE = "inet:blackhole.test:9"  # connects never complete


def memory_scanners(
    monkeypatch: pytest.MonkeyPatch,
    nursery: trio.Nursery,
    fakes: Mapping[str, FakeSpamd | FakeClamd],
) -> list[str]:
    """Route the scanner clients to `fakes` (by their ``Scanners:`` address, without the
    kind); an address with no fake is refused, `BLACKHOLE` never answers the connect.
    Returns the addresses connected to, in order."""
    connected: list[str] = []

    async def connect(address: MilterAddress, timeout: float) -> trio.abc.Stream:
        connected.append(address.text)
        if address.text == BLACKHOLE:
            with monkeypatch.context() as patch:

                async def never(*_args: object) -> trio.abc.Stream:
                    await trio.sleep_forever()
                    raise AssertionError

                patch.setattr(trio, "open_tcp_stream", never)
                return await link.connect(address, timeout)
        fake = fakes.get(address.text)
        if fake is None:
            raise link.ScannerFailure("cannot connect: Connection refused")
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(fake.handle, theirs)
        return ours

    monkeypatch.setattr(spamd, "connect", connect)
    monkeypatch.setattr(clamd, "connect", connect)
    return connected
