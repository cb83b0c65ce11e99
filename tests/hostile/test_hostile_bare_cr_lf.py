"""Issue 21, item 12: never a bare CR or LF towards the next server, from any source
(docs/behaviour.md §5.1).

Every byte the next server receives is checked (each CR followed by LF, each LF preceded by
CR), the replay going as DATA and as BDAT, for each source of bytes: the client's body, the
filter's output, a milter's new body and header values, the `Header` option, the
quarantine text. The header section that arrives is also checked: a line break inside a
header value can neither end it nor start a field of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from hostile_support import memory_connection
from lenient_upstream import LenientUpstream, bare_line_ends

from trio_proxsmtp.protocol.milter.messages import AddHeader, Quarantine, ReplaceBody
from trio_proxsmtp.testing.fake_milter import CONTINUE, FakeMilter

BARE = b"Subject: bare\r\nX-Mixed: a\r\tb\r\n\r\nline one\rline two\nline three\r\r\n\n.\r\nend\r"

# How the client sends it and how the proxy replays it: DATA or BDAT, each way.
WAYS = {
    "data": ("", True, False),
    "bdat-as-bdat": ("Chunking: on", True, True),
    "bdat-as-data": ("Chunking: on", False, True),
}


def check_clean(up: LenientUpstream) -> bytes:
    """Every byte sent upstream is CRLF-clean; one transaction; its header section is
    made of fields and their folds (the sources here fold their own with white space).
    Returns the message as received."""
    received = bytes(up.received)
    assert bare_line_ends(received) == 0, received
    assert len(up.transactions) == 1, up.transactions
    data = up.transactions[0].data
    head = data.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        assert line[:1] in (b" ", b"\t") or b":" in line, (line, data)
    return data


async def send(way: str, config: str, up: LenientUpstream, body: bytes = BARE) -> None:
    client_config, _, bdat = WAYS[way]
    config = f"{client_config}\n{config}"
    with trio.fail_after(30):
        async with memory_connection(config, up.handle) as (client, _):
            await client.greeting()
            assert (await client.command("EHLO c")).code == 250
            assert (await client.command("MAIL FROM:<a@x>")).code == 250
            assert (await client.command("RCPT TO:<b@x>")).code == 250
            if bdat:
                await client.send(b"BDAT %d LAST\r\n" % len(body) + body)
            else:
                assert (await client.command("DATA")).code == 354
                await client.send(body.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
            reply = await client.read_reply()
            assert reply.code == 250, reply
            assert (await client.command("QUIT")).code == 221


def make_upstream(way: str) -> LenientUpstream:
    return LenientUpstream(chunking=WAYS[way][1])


@pytest.mark.parametrize("way", list(WAYS))
async def test_the_clients_bare_line_ends(way: str) -> None:
    up = make_upstream(way)
    await send(way, "", up)
    data = check_clean(up)
    assert b"line one\r\nline two\r\nline three\r\n" in data


@pytest.mark.parametrize("way", list(WAYS))
async def test_the_filters_bare_line_ends(way: str) -> None:
    up = make_upstream(way)
    printf = r"printf 'Subject: f\r\nX-F: 1\r 2\n\nfiltered\rbody\nend\r'"
    await send(way, f"FilterCommand: {printf}", up)
    data = check_clean(up)
    assert data.startswith(b"Subject: f\r\nX-F: 1\r\n 2\r\n\r\n")  # (a bare CR: a line end)
    assert b"filtered\r\nbody\r\nend\r\n" in data


@pytest.mark.parametrize("way", list(WAYS))
async def test_the_header_option_with_cr_and_lf_escapes(way: str) -> None:
    up = make_upstream(way)
    await send(way, r"Header: X-H: one\rX-I: two\nX-J: three\r", up)
    data = check_clean(up)
    assert b"X-H: one\r\nX-I: two\r\nX-J: three\r\n" in data


@asynccontextmanager
async def milter_config(milter: FakeMilter) -> AsyncIterator[str]:
    async with milter.serving() as address:
        yield f"Milters: {address}"


@pytest.mark.parametrize("way", list(WAYS))
async def test_a_milters_body_and_header_values(way: str) -> None:
    milter = FakeMilter(
        {
            "eom": [
                AddHeader("X-Milter", "first\rSecond: injected\n\nbody?\r\n\tfolded\n"),
                ReplaceBody(b"new\rbody\nfrom the milter\r"),
                CONTINUE,
            ]
        }
    )
    up = make_upstream(way)
    async with milter_config(milter) as config:
        await send(way, config, up)
    data = check_clean(up)
    assert b"X-Milter: first\r\n Second: injected\r\n body?\r\n\tfolded\r\n\r\n" in data
    assert data.endswith(b"\r\n\r\nnew\r\nbody\r\nfrom the milter\r\n")


@pytest.mark.parametrize("way", list(WAYS))
async def test_the_quarantine_text(way: str) -> None:
    milter = FakeMilter({"eom": [Quarantine("spam\r\n\r\nX-Fake: 1\rmore\n"), CONTINUE]})
    up = make_upstream(way)
    async with milter_config(milter) as config:
        await send(way, config, up)
    data = check_clean(up)
    assert b"X-Quarantine-Reason: spam\r\n X-Fake: 1\r\n more\r\n\r\n" in data
