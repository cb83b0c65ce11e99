"""The reader's BDAT chunk framing and its peek at the next command line (sans-IO)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.session.actions import ReceiveChunk
from trio_proxsmtp.protocol.smtp.reader import Chunk, ClientReader, Line, Mode, NeedData


@given(
    payload=st.binary(max_size=300),
    after=st.sampled_from([b"", b"NOOP\r\n", b"BDAT 3 LAST\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_a_chunk_is_exactly_its_bytes_whatever_the_split(
    payload: bytes, after: bytes, cuts: list[int]
) -> None:
    wire = payload + after
    points = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    pieces = [wire[a:b] for a, b in itertools.pairwise(points)]
    reader = ClientReader()
    reader.follow(ReceiveChunk(len(payload), last=False))
    got = b""
    done = False
    for piece in [b"", *pieces]:
        if piece:
            reader.feed(piece)
        while not done:
            event = reader.next_event()
            if isinstance(event, NeedData):
                break
            assert isinstance(event, Chunk)
            got += event.data
            done = event.done
    assert done and got == payload
    assert reader.mode is Mode.COMMAND
    if after:
        assert reader.peek_line() == after
        assert reader.next_event() == Line(after)
    else:
        assert isinstance(reader.next_event(), NeedData)


def test_peek_line_does_not_take_the_line() -> None:
    reader = ClientReader()
    assert reader.peek_line() is None
    reader.feed(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRC")
    assert reader.peek_line() == b"MAIL FROM:<a@x>\r\n"
    assert reader.next_event() == Line(b"MAIL FROM:<a@x>\r\n")
    assert reader.peek_line() == b"RCPT TO:<b@x>\r\n"
    assert reader.next_event() == Line(b"RCPT TO:<b@x>\r\n")
    assert reader.peek_line() is None  # incomplete


def test_peek_line_sees_no_over_long_line() -> None:
    reader = ClientReader(max_line=10)
    reader.feed(b"x" * 20 + b"\r\n")
    assert reader.peek_line() is None
