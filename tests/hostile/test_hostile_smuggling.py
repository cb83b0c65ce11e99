"""Issue 21, item 11: SMTP smuggling, the public vectors (docs/behaviour.md §5.1).

The end-of-data variants of the published smuggling tools, each followed by a second
transaction, go through DATA, through BDAT (replayed as BDAT and as DATA) and through the
streamed `Skip: authenticated` path, in two writes at every split of the bytes, to a
deliberately lenient next server (`lenient_upstream`): exactly one transaction arrives,
with the smuggled commands inside its body, and the client gets one reply.
"""

from __future__ import annotations

import pytest
import trio
from hostile_support import memory_connection
from hypothesis import given, settings
from hypothesis import strategies as st
from lenient_upstream import END_OF_DATA, LenientUpstream, bare_line_ends

from trio_proxsmtp.protocol.smtp.data import DataReceiver, DataSender, LineEnds, stuff, unstuff

# What the smuggler puts where a server might see an end of data (not `\r\r\n.\r\n`:
# it holds a real CRLF "." CRLF, an end for every server and for the proxy alike).
END_OF_DATA_VARIANTS = {
    "lf.lf": b"\n.\n",
    "lf.crlf": b"\n.\r\n",
    "lf.cr": b"\n.\r",
    "cr.cr": b"\r.\r",
    "cr.crlf": b"\r.\r\n",
    "cr.lf": b"\r.\n",
    "crlf.lf": b"\r\n.\n",
    "crlf.cr": b"\r\n.\r",
    "crlf.crcrlf": b"\r\n.\r\r\n",
    "crcrlf.crcrlf": b"\r\r\n.\r\r\n",
    "lfcr.crlf": b"\n\r.\r\n",
    "crlf-nul.crlf": b"\r\n\x00.\r\n",
    "crlf.nul-crlf": b"\r\n.\x00\r\n",
    "lf-nul.lf": b"\n\x00.\n",
    "crlf-nulnul.cr": b"\r\n\x00\x00.\r",
    "cr-nul-cr.crlf": b"\r\x00\r.\r\n",
    "crlf-nul-cr.crlf": b"\r\n\x00\r.\r\n",
}

BODY = b"Subject: hello\r\n\r\nbody"
SMUGGLED = (
    b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\n"
    b"From: ceo@x\r\nSubject: smuggled\r\n\r\nevil\r\n"
)


def message(variant: bytes) -> bytes:
    """The client's message: a body, the variant, the smuggled transaction."""
    return BODY + variant + SMUGGLED


def client_wire(path: str, variant: bytes) -> bytes:
    """What the client sends after its RCPT (after DATA's 354 for DATA)."""
    body = message(variant)
    if path.startswith("bdat"):
        return b"BDAT %d LAST\r\n" % len(body) + body
    return body + b".\r\n"


def relay_splits(wire: bytes, variant: bytes) -> list[int]:
    """The splits where the relay's framing is decided: around the variant, around the
    final dot, and (BDAT) in the command line; the codec test below takes every split."""
    start = wire.index(variant)
    points = {*range(start - 2, start + len(variant) + 3), *range(len(wire) - 6, len(wire))}
    points |= set(range(1, wire.index(b"\r\n") + 2)) if wire.startswith(b"BDAT") else set()
    return sorted(p for p in points if 0 < p < len(wire))


def check_one_transaction(up: LenientUpstream, variant: bytes) -> None:
    assert len(up.transactions) == 1, up.transactions
    [t] = up.transactions
    assert t.sender == b"<a@x>" and t.recipients == [b"<b@x>"]
    assert b"victim@x" in t.data and b"smuggled" in t.data  # inside the one body
    assert not any(c.upper().startswith(b"MAIL FROM:<EVIL") for c in up.commands)


async def _session(path: str, variant: bytes, split: int, up: LenientUpstream, config: str) -> None:
    wire = client_wire(path, variant)
    async with memory_connection(config, up.handle) as (client, _):
        await client.greeting()
        assert (await client.command("EHLO c")).code == 250
        if path == "skip":
            assert (await client.command("AUTH PLAIN AGFAYg==")).code == 235
        assert (await client.command("MAIL FROM:<a@x>")).code == 250
        assert (await client.command("RCPT TO:<b@x>")).code == 250
        if not path.startswith("bdat"):
            assert (await client.command("DATA")).code == 354
        await client.send(wire[:split])
        await trio.sleep(0)
        await client.send(wire[split:])
        reply = await client.read_reply()
        assert reply.code == 250, reply
        assert (await client.command("QUIT")).code == 221


PATHS = {
    "data": ("", True),
    "skip": ("Skip: authenticated", True),
    "bdat-as-bdat": ("Chunking: on", True),
    "bdat-as-data": ("Chunking: on", False),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("variant", list(END_OF_DATA_VARIANTS))
async def test_one_transaction_arrives_at_every_split(path: str, variant: str) -> None:
    config, chunking = PATHS[path]
    eod = END_OF_DATA_VARIANTS[variant]
    with trio.fail_after(60):
        for split in relay_splits(client_wire(path, eod), eod):
            up = LenientUpstream(chunking=chunking)
            await _session(path, eod, split, up, config)
            check_one_transaction(up, eod)
            assert up.transactions[0].bdat is (path == "bdat-as-bdat")


@pytest.mark.parametrize("variant", list(END_OF_DATA_VARIANTS))
def test_the_data_codec_never_sends_a_lenient_end_of_data(variant: str) -> None:
    """The sans-IO pair at every split of the client's bytes, then of the replay: what goes
    upstream holds no line a lenient server would take for the end, only the final one."""
    wire_in = message(END_OF_DATA_VARIANTS[variant]) + b".\r\n"
    bodies = set()
    for split in range(len(wire_in) + 1):
        receiver = DataReceiver()
        body = receiver.feed(wire_in[:split])
        if not receiver.done:
            body += receiver.feed(wire_in[split:])
        assert receiver.done and receiver.take_remaining() == b""
        bodies.add(body)
    [body] = bodies  # the same message whatever the split
    for cut in range(len(body) + 1):
        sender = DataSender()
        out = sender.feed(body[:cut]) + sender.feed(body[cut:]) + sender.finish()
        ends = list(END_OF_DATA.finditer(out))
        assert len(ends) == 1 and ends[0].end() == len(out), (cut, out)


# The NUL rule of DataSender by itself: exact for a conforming server, never a lone "."
# for one that drops NULs, whatever the chunks.
nul_messages = st.binary(max_size=40).map(
    lambda raw: bytes(b"\r\n\x00.a"[byte % 5] for byte in raw)
)
chunk_sizes = st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=6)


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _fed(message: bytes, sizes: list[int]) -> bytes:
    sender, out, pos, index = DataSender(), b"", 0, 0
    while pos < len(message):
        size = sizes[index % len(sizes)]
        out += sender.feed(message[pos : pos + size])
        pos, index = pos + size, index + 1
    return out + sender.finish()


@given(nul_messages, chunk_sizes)
@settings(max_examples=400)
def test_a_dot_after_nuls_gets_a_transparency_dot(message: bytes, sizes: list[int]) -> None:
    wire = _fed(message, sizes)
    assert wire == stuff(message)  # the chunks do not matter
    # a conforming server gets the message itself (line ends made CRLF, a final one added)
    expected = _crlf(message)
    assert unstuff(wire) == (expected + b"\r\n" if expected[-1:] not in b"\n" else expected)
    dropped = wire.replace(b"\x00", b"")
    assert [m.end() for m in END_OF_DATA.finditer(dropped)] == [len(dropped)]


def test_a_long_run_of_nuls_before_a_dot() -> None:
    """Past the NULs DataSender holds back, the dot after them is doubled in place."""
    message = b"a\r\n" + b"\x00" * 5000 + b".\r\nb\r\n"
    wire = _fed(message, [100])
    assert b"\x00..\r\n" in wire and wire.replace(b"\x00", b"").count(b"\r\n.\r\n") == 1
    assert wire.endswith(b"b\r\n.\r\n")


@given(st.binary(max_size=40).map(lambda raw: bytes(b"\r\na"[b % 3] for b in raw)), chunk_sizes)
def test_line_ends_for_the_bdat_replay(message: bytes, sizes: list[int]) -> None:
    lines, out, pos, index = LineEnds(), b"", 0, 0
    while pos < len(message):
        size = sizes[index % len(sizes)]
        out += lines.feed(message[pos : pos + size])
        pos, index = pos + size, index + 1
    out += lines.finish()
    assert bare_line_ends(out) == 0
    assert out == _crlf(message)
