"""Many clients at once through a real `cat` filter: every message delivered exactly once."""

from __future__ import annotations

import trio

from trio_proxsmtp.testing import FakeUpstream, run_proxy

CLIENTS = 50
MESSAGES = 5


def message(client: int, number: int) -> bytes:
    """A distinct message with the awkward bytes: a dot line, 8-bit, a long line."""
    return (
        f"Subject: {client}/{number}\r\n\r\n".encode()
        + b".starts with a dot\r\n.\r\n\xff\xfe 8-bit\r\n"
        + b"x" * (1000 + client * 7 + number)
        + b"\r\n"
    )


async def test_concurrent_clients_through_cat() -> None:
    with trio.fail_after(50):
        async with (
            FakeUpstream() as up,
            run_proxy(f"FilterCommand: cat\nMaxConnections: {CLIENTS}", upstream=up) as proxy,
        ):

            async def one_client(index: int) -> None:
                async with proxy.connect(timeout=40) as client:
                    for number in range(MESSAGES):
                        replies = await client.send_message(
                            f"c{index}@x", [f"r{number}@x"], message(index, number)
                        )
                        assert [r.code for r in replies] == [250, 250, 354, 250]
                    assert (await client.quit()).code == 221

            async with trio.open_nursery() as nursery:
                for index in range(CLIENTS):
                    nursery.start_soon(one_client, index)

            assert len(up.transactions) == CLIENTS * MESSAGES
            delivered = {(t.mail_from, tuple(t.rcpt_to), t.message) for t in up.transactions}
            expected = {
                (f"c{i}@x", (f"r{n}@x",), message(i, n))
                for i in range(CLIENTS)
                for n in range(MESSAGES)
            }
            assert delivered == expected
            assert proxy.leftovers() == []
