"""`DataReceiver.dot_lines` and `DataSender(dot_lines=False)` (issue 26): the replay of the
client's own DATA skips the search for dot lines only when its reader saw none, and then
sends exactly what the full search would (docs/behaviour.md §5.1, §11.22); and the line-end
check, by searches for long lines and by counts for short ones, finds every bare CR or LF."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_proxsmtp.protocol.smtp import data as data_module
from trio_proxsmtp.protocol.smtp.data import DataReceiver, DataSender

ALPHABET = [b"\r", b"\n", b".", b"x", b"\x00", b"\r\n", b"\r\n.", b"\r\n.\r\n"]


def received(wire: bytes, cuts: list[int]) -> tuple[bytes, DataReceiver]:
    receiver = DataReceiver()
    out = []
    edges = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(edges):
        out.append(receiver.feed(wire[a:b]))
        if receiver.done:
            break
    return b"".join(out), receiver


def sent(message: bytes, cuts: list[int], *, dot_lines: bool) -> bytes:
    sender = DataSender(clean=True, dot_lines=dot_lines)
    edges = sorted({c % (len(message) + 1) for c in cuts} | {0, len(message)})
    out = [sender.feed(message[a:b]) for a, b in itertools.pairwise(edges)]
    return b"".join(out) + sender.finish()


@settings(max_examples=400)
@given(
    st.lists(st.sampled_from(ALPHABET), max_size=40),
    st.lists(st.integers(0, 200), max_size=6),
    st.lists(st.integers(0, 200), max_size=6),
)
def test_without_dot_lines_the_replay_sends_what_the_full_search_would(
    pieces: list[bytes], read_cuts: list[int], send_cuts: list[int]
) -> None:
    message, receiver = received(b"".join(pieces) + b"\r\n.\r\n", read_cuts)
    assert receiver.done
    if not receiver.dot_lines:
        assert not message.startswith(b".") and b"\r\n." not in message
        assert sent(message, send_cuts, dot_lines=False) == sent(message, send_cuts, dot_lines=True)


def test_a_message_without_dots_has_no_dot_lines() -> None:
    message, receiver = received(b"Subject: a\r\n\r\nbody. text\r\nx.\r\n.\r\n", [7, 20])
    assert message == b"Subject: a\r\n\r\nbody. text\r\nx.\r\n"
    assert not receiver.dot_lines


def test_a_stuffed_dot_or_a_bare_line_end_makes_dot_lines() -> None:
    for wire, cuts in (
        (b"a\r\n..b\r\n.\r\n", []),  # a stuffed dot
        (b"..a\r\n.\r\n", []),  # on the first line
        (b"a\r\n..b\r\n.\r\n", [3]),  # the dot at the start of a read
        (b"a\n.b\r\n.\r\n", []),  # a bare LF before a dot: CRLF "." once normalised
        (b"a\r.b\r\n.\r\n", []),  # a bare CR, ditto
        (b"a" + b"\r\n..b" * 100 + b"\r\n.\r\n", []),  # many: removed by replace()
    ):
        _message, receiver = received(wire, cuts)
        assert receiver.dot_lines, wire


def test_dot_lines_false_is_ignored_without_clean() -> None:
    sender = DataSender(dot_lines=False)
    assert sender.feed(b".a\r\n.b\r\n") + sender.finish() == b"..a\r\n..b\r\n.\r\n"


def test_dot_lines_false_with_clean_does_not_search() -> None:
    # The caller vouched that no line starts with a dot: one that does is not looked for.
    sender = DataSender(clean=True, dot_lines=False)
    assert sender.feed(b".a\r\n.b\r\n") + sender.finish() == b".a\r\n.b\r\n.\r\n"


def test_dot_lines_false_still_gives_a_nul_dot_line_its_dot() -> None:
    sender = DataSender(clean=True, dot_lines=False)
    assert sender.feed(b"a\r\n\x00.b\r\n") + sender.finish() == b"a\r\n.\x00.b\r\n.\r\n"


def is_clean_by_definition(data: bytes) -> bool:
    return all(
        (byte != 13 or data[i + 1 : i + 2] == b"\n") and (byte != 10 or data[i - 1 : i] == b"\r")
        for i, byte in enumerate(data)
    )


@settings(max_examples=500)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\r", b"x", b"x" * 40]), max_size=30))
def test_the_line_end_check_agrees_with_its_definition_for_short_and_long_lines(
    pieces: list[bytes],
) -> None:
    # Long lines take the searches for a bare CR or LF, short ones the counts.
    data = b"".join(pieces)
    assert data_module._is_clean(data) == is_clean_by_definition(data)


def test_the_line_end_check_takes_both_ways() -> None:
    long_lines = b"x" * 80 + b"\r\n"
    for data, clean in (
        (long_lines * 3, True),
        (long_lines + b"x\ry" + long_lines, False),
        (long_lines + b"x\ny" + long_lines, False),
        (long_lines + b"\r", False),
        (b"\n" + long_lines, False),
        (b"\r\n" * 50, True),
        (b"\r\n" * 50 + b"\n\r", False),
        (b"\r\n\r" * 50, False),
    ):
        assert data_module._is_clean(data) == clean == is_clean_by_definition(data), data
