"""`ClientReader.quit_with_end`: a QUIT that came with the message's end, and nothing else
(the half-close after it is no departure under PIPELINING: docs/behaviour.md §11.20)."""

from __future__ import annotations

import pytest

from trio_proxsmtp.protocol.session.actions import ReceiveChunk
from trio_proxsmtp.protocol.smtp.reader import Body, Chunk, ClientReader, Line


def ended(with_end: bytes, later: bytes = b"") -> ClientReader:
    """A DATA body whose final dot came with `with_end`, then `later` fed after it."""
    reader = ClientReader()
    reader.begin_message()
    reader.feed(b"Subject: t\r\n\r\nbody\r\n.\r\n" + with_end)
    assert reader.next_event() == Body(b"Subject: t\r\n\r\nbody\r\n", True)
    reader.feed(later)
    return reader


@pytest.mark.parametrize(
    ("with_end", "later"),
    [(b"QUIT\r\n", b""), (b"Q", b"UIT\r\n"), (b"QUIT", b"\r\n"), (b"quit\r\n", b"")],
)
def test_a_quit_that_came_with_the_dot(with_end: bytes, later: bytes) -> None:
    assert ended(with_end, later).quit_with_end()


@pytest.mark.parametrize(
    ("with_end", "later"),
    [
        (b"", b"QUIT\r\n"),  # it came after the dot: the client had waited
        (b"QUIT", b""),  # not a whole line
        (b"NOOP\r\nQUIT\r\n", b""),  # more than a QUIT
        (b"QUIT\r\n", b"NOOP\r\n"),
        (b"QUIT now\r\n", b""),
        (b"QUIT\n", b""),
    ],
)
def test_anything_else_is_not(with_end: bytes, later: bytes) -> None:
    assert not ended(with_end, later).quit_with_end()


def test_not_once_a_command_was_read_after_the_end() -> None:
    reader = ended(b"NOOP\r\n")
    assert reader.next_event() == Line(b"NOOP\r\n")
    reader.feed(b"QUIT\r\n")
    assert not reader.quit_with_end()


def test_not_before_any_message() -> None:
    reader = ClientReader()
    reader.feed(b"QUIT\r\n")
    assert not reader.quit_with_end()


@pytest.mark.parametrize(("last", "expected"), [(True, True), (False, False)])
def test_after_a_bdat_chunk_only_the_last(last: bool, expected: bool) -> None:
    reader = ClientReader()
    reader.follow(ReceiveChunk(4, last))
    reader.feed(b"bodyQUIT\r\n")
    assert reader.next_event() == Chunk(b"body", True)
    assert reader.quit_with_end() is expected


def test_after_bdat_0_last() -> None:
    reader = ClientReader()
    reader.follow(ReceiveChunk(0, True))
    reader.feed(b"QUIT\r\n")
    assert reader.next_event() == Chunk(b"", True)
    assert reader.quit_with_end()
