"""run_proxy: the proxy in-process between a FakeClient and a FakeUpstream."""

from __future__ import annotations

import os

import trio

from trio_proxsmtp.stages.spool import BUFFER_SIZE, Spool
from trio_proxsmtp.testing import FakeUpstream, run_proxy

MESSAGE = b"Subject: t\r\n\r\n..dot line\r\nbody\r\n"


async def test_run_proxy_relays_one_message_through_cat() -> None:
    with trio.fail_after(30):
        async with FakeUpstream() as up, run_proxy("FilterCommand: cat", upstream=up) as proxy:
            assert proxy.host == "127.0.0.1" and proxy.port != 0
            assert proxy.config.out_address is not None
            assert proxy.config.out_address.port == up.port
            temp_directory = proxy.temp_directory
            async with proxy.connect() as client:
                assert (await client.greeting()).code == 220
                replies = await client.send_message("s@x", ["r@x"], MESSAGE)
                await client.quit()
            assert replies[-1].code == 250
            [transaction] = up.transactions
            assert transaction.rcpt_to == ["r@x"]
            assert transaction.message == MESSAGE
            assert os.listdir(temp_directory) == []
        assert not os.path.exists(temp_directory)


async def test_leftovers_sees_named_and_unnamed_spools() -> None:
    with trio.fail_after(10):
        async with FakeUpstream() as up, run_proxy("", upstream=up) as proxy:
            assert proxy.leftovers() == []
            named = Spool.create(proxy.temp_directory)
            unnamed = Spool.create(proxy.temp_directory, named=False)
            unnamed.write(b"x" * (BUFFER_SIZE + 1))  # past memory: an unnamed file
            try:
                found = proxy.leftovers()
                assert len(found) == 2
                assert os.path.realpath(named.path) in found
            finally:
                named.close()
                unnamed.close()
            assert proxy.leftovers() == []
