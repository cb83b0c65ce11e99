"""Line framing: terminators, the length limit, and independence from how input is split."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.smtp.lines import CLIENT_LINE_LIMIT, LineBuffer, LineTooLong


def drain(buffer: LineBuffer) -> list[bytes | LineTooLong]:
    events: list[bytes | LineTooLong] = []
    while (event := buffer.next_line()) is not None:
        events.append(event)
    return events


def test_crlf_and_bare_lf_end_lines_and_are_kept() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"HELO a\r\nNOOP\nQUI")
    assert drain(buffer) == [b"HELO a\r\n", b"NOOP\n"]
    assert buffer.buffered_size == 3
    buffer.feed(b"T\r\n")
    assert drain(buffer) == [b"QUIT\r\n"]
    assert buffer.buffered_size == 0


def test_bare_cr_does_not_end_a_line() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"a\rb\r\n")
    assert drain(buffer) == [b"a\rb\r\n"]


def test_client_limit_matches_reference() -> None:
    # proxsmtpd answers lines of 4222 bytes or more; 4221 bytes still pass.
    buffer = LineBuffer(CLIENT_LINE_LIMIT)
    ok = b"N" * (4221 - 2) + b"\r\n"
    too_long = b"N" * (4222 - 2) + b"\r\n"
    buffer.feed(ok + too_long + b"QUIT\r\n")
    assert drain(buffer) == [ok, LineTooLong(4222), b"QUIT\r\n"]


def test_over_long_line_is_discarded_as_it_arrives() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"x" * 10)
    assert buffer.next_line() is None
    assert buffer.buffered_size == 0  # a 10-byte line could only end at 11 bytes: dropped
    for _ in range(1000):
        buffer.feed(b"y" * 1000)
        assert buffer.next_line() is None
        assert buffer.buffered_size == 0
    buffer.feed(b"z\r\nNOOP\r\n")
    assert drain(buffer) == [LineTooLong(10 + 1000 * 1000 + 3), b"NOOP\r\n"]


def test_take_remaining_hands_over_unconsumed_bytes() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"DATA\r\nSubject: x\r\n\r\nbody")
    assert buffer.next_line() == b"DATA\r\n"
    assert buffer.take_remaining() == b"Subject: x\r\n\r\nbody"
    assert buffer.buffered_size == 0
    assert buffer.next_line() is None


def test_many_lines_compact_the_buffer() -> None:
    buffer = LineBuffer(100)
    lines = [b"NOOP %d\r\n" % i for i in range(10000)]
    buffer.feed(b"".join(lines))
    assert drain(buffer) == lines


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


stream = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from([b"\r\n", b"\n", b"\r", b"x" * 40]),
    ),
    max_size=30,
).map(b"".join)


@given(stream, st.lists(st.integers(min_value=0), max_size=20))
def test_split_independence(data: bytes, cuts: list[int]) -> None:
    whole = LineBuffer(32)
    whole.feed(data)
    expected = drain(whole)
    pieces = LineBuffer(32)
    got: list[bytes | LineTooLong] = []
    for piece in split_at(data, cuts):
        pieces.feed(piece)
        got.extend(drain(pieces))
    assert got == expected
    assert pieces.take_remaining() == whole.take_remaining()
    # and the framing is lossless for lines within the limit
    assert all(isinstance(e, LineTooLong) or (e.endswith(b"\n") and len(e) <= 32) for e in got)
