"""The DATA stream: end-of-data detection, un/stuffing, line ends, split independence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_proxsmtp.protocol.errors import LocalProtocolError
from trio_proxsmtp.protocol.smtp import data as data_module
from trio_proxsmtp.protocol.smtp.data import DataReceiver, DataSender, stuff, unstuff


def receive(*chunks: bytes) -> tuple[bytes, bool, bytes]:
    receiver = DataReceiver()
    out = b""
    for index, chunk in enumerate(chunks):
        out += receiver.feed(chunk)
        if receiver.done:
            assert receiver.size == len(out)
            return out, True, receiver.take_remaining() + b"".join(chunks[index + 1 :])
    assert receiver.size == len(out)
    return out, False, receiver.take_remaining()


def normalise(message: bytes) -> bytes:
    """What a message becomes on the way through: CRLF line ends, a final CRLF if non-empty."""
    lines = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if lines and not lines.endswith(b"\n"):
        lines += b"\n"
    return lines.replace(b"\n", b"\r\n")


# ---- DataReceiver edge cases ---------------------------------------------------------------


def test_empty_message_right_after_data_ends() -> None:
    # B6: the first empty message of a connection hung in 1.10.
    assert receive(b".\r\n") == (b"", True, b"")
    assert receive(b".", b"\r", b"\n") == (b"", True, b"")


def test_standard_message() -> None:
    assert receive(b"Subject: t\r\n\r\nbody\r\n.\r\n") == (b"Subject: t\r\n\r\nbody\r\n", True, b"")


def test_transparency_dots_are_removed() -> None:
    # B7: the filter now sees the message, not the wire form.
    assert receive(b"..\r\n..leading dot\r\n.x\r\n.\r\n")[0] == b".\r\n.leading dot\r\nx\r\n"
    assert receive(b"...\r\n.\r\n")[0] == b"..\r\n"


def test_dot_inside_a_line_is_content() -> None:
    assert receive(b"a.b\r\na .\r\n.\r\n")[0] == b"a.b\r\na .\r\n"


def test_five_thousand_byte_line_passes_intact() -> None:
    line = b"x" * 5000 + b"\r\n"
    out, done, _ = receive(line[:1234], line[1234:], b".\r\n")
    assert (out, done) == (line, True)


def test_bare_lf_dot_is_not_a_terminator() -> None:
    out, done, _ = receive(b"a\n.\nb\n")
    assert not done
    assert out == b"a\r\n.\r\nb\r\n"  # content, normalised; DataSender will stuff the dot


def test_crlf_dot_after_bare_lf_line_is_content() -> None:
    out, done, rest = receive(b"a\n.\r\nb\r\n.\r\n")
    assert (out, done, rest) == (b"a\r\n.\r\nb\r\n", True, b"")


def test_dot_after_bare_cr_is_not_stuffing() -> None:
    assert receive(b"a\r.b\r\n.\r\n")[0] == b"a\r\n.b\r\n"


def test_bare_cr_and_lf_become_crlf() -> None:
    out, done, _ = receive(b"a\rb\nc\r\r\n\n\r\r\n.\r\n")
    assert done
    assert out == b"a\r\nb\r\nc\r\n\r\n\r\n\r\n\r\n"


def test_nul_and_8bit_pass_unchanged() -> None:
    assert receive(b"ab\x00cd\xff\r\n.\r\n")[0] == b"ab\x00cd\xff\r\n"


def test_commands_after_the_terminator_are_kept() -> None:
    out, done, rest = receive(b"body\r\n.\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n")
    assert (out, done, rest) == (b"body\r\n", True, b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n")


def test_only_the_first_terminator_counts() -> None:
    out, _, rest = receive(b"x\r\n.\r\n.\r\n")
    assert (out, rest) == (b"x\r\n", b".\r\n")


def test_terminator_split_across_every_boundary() -> None:
    wire = b"abc\r\n.\r\nQUIT\r\n"
    for i in range(len(wire) + 1):
        for j in range(i, len(wire) + 1):
            assert receive(wire[:i], wire[i:j], wire[j:]) == (b"abc\r\n", True, b"QUIT\r\n")


def test_uncertain_bytes_are_held_back() -> None:
    receiver = DataReceiver()
    assert receiver.feed(b"abc\r\n.") == b"abc"
    assert receiver.feed(b"\r") == b""
    assert receiver.feed(b"x") == b"\r\n\r\nx"  # ".\r" then "x": a stuffed line with a bare CR
    assert not receiver.done


def test_many_dot_lines_take_the_bulk_path() -> None:
    body = b"".join(b"..%d\r\n" % i for i in range(5000))
    out, done, _ = receive(body + b".\r\n")
    assert done
    assert out == b"".join(b".%d\r\n" % i for i in range(5000))


def test_feed_after_done_is_our_bug() -> None:
    receiver = DataReceiver()
    receiver.feed(b".\r\n")
    with pytest.raises(LocalProtocolError):
        receiver.feed(b"x")


def test_take_remaining_hands_over_once() -> None:
    receiver = DataReceiver()
    receiver.feed(b".\r\nNOOP\r\n")
    assert receiver.take_remaining() == b"NOOP\r\n"
    assert receiver.take_remaining() == b""


# ---- DataSender ---------------------------------------------------------------------------


def test_sender_stuffs_and_terminates() -> None:
    assert stuff(b"Subject: t\r\n\r\nbody\r\n") == b"Subject: t\r\n\r\nbody\r\n.\r\n"
    assert stuff(b".\r\n.x\r\nmid.dot\r\n") == b"..\r\n..x\r\nmid.dot\r\n.\r\n"


def test_sender_empty_message() -> None:
    assert stuff(b"") == b".\r\n"


def test_sender_adds_missing_final_crlf() -> None:
    # B7: 1.10 glued the terminator onto the last line and the upstream hung.
    assert stuff(b"last line no newline") == b"last line no newline\r\n.\r\n"
    assert stuff(b"a\r") == b"a\r\n.\r\n"


def test_sender_normalises_bare_line_ends() -> None:
    # a filter writing bare LF, and the 1.10 ".\r\n" guard case (". \r" merged lines)
    assert stuff(b"a\n.\nb\rc") == b"a\r\n..\r\nb\r\nc\r\n.\r\n"


def test_sender_line_start_across_chunks() -> None:
    sender = DataSender()
    wire = sender.feed(b"a\r") + sender.feed(b"\n") + sender.feed(b".b\r\n") + sender.feed(b".")
    assert wire + sender.finish() == b"a\r\n..b\r\n..\r\n.\r\n"


def test_sender_bulk_path() -> None:
    message = b"".join(b".%d\r\n" % i for i in range(5000))
    assert stuff(message) == b"".join(b"..%d\r\n" % i for i in range(5000)) + b".\r\n"


def test_sender_misuse_is_our_bug() -> None:
    sender = DataSender()
    sender.finish()
    with pytest.raises(LocalProtocolError):
        sender.feed(b"x")
    with pytest.raises(LocalProtocolError):
        sender.finish()


def test_unstuff_requires_terminator() -> None:
    with pytest.raises(ValueError):
        unstuff(b"no end\r\n")


# ---- properties ---------------------------------------------------------------------------

# Messages rich in the bytes that matter: dots, CR, LF, NUL, 8-bit, CRLF.CRLF itself.
message_bytes = st.lists(
    st.one_of(
        st.sampled_from(
            [b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.\r\n", b"\n.\n", b"\x00", b"\xff", b"a"]
        ),
        st.binary(max_size=8),
    ),
    max_size=40,
).map(b"".join)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` in consecutive chunks of the given sizes (cycled), each 1..n bytes."""
    chunks, pos, index = [], 0, 0
    while pos < len(data):
        size = sizes[index % len(sizes)] if sizes else len(data)
        chunks.append(data[pos : pos + size])
        pos += size
        index += 1
    return chunks


chunk_sizes = st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=10)


@given(message_bytes)
def test_unstuff_of_stuff_is_normalise(message: bytes) -> None:
    assert unstuff(stuff(message)) == normalise(message)


@given(message_bytes, chunk_sizes)
def test_sender_split_independence_and_no_early_terminator(
    message: bytes, sizes: list[int]
) -> None:
    sender = DataSender()
    wire = b"".join(sender.feed(chunk) for chunk in split(message, sizes)) + sender.finish()
    assert wire == stuff(message)
    body = wire[: -len(b".\r\n")]
    assert b"\r\n.\r\n" not in b"\r\n" + body  # nothing ends DATA before the real terminator
    assert normalise(body) == body  # only CRLF line ends on the wire


@given(message_bytes, message_bytes, chunk_sizes)
@settings(max_examples=300)
def test_receiver_split_independence(wire: bytes, after: bytes, sizes: list[int]) -> None:
    data = wire + after
    whole = DataReceiver()
    expected = whole.feed(data)
    expected_rest = whole.take_remaining()
    receiver = DataReceiver()
    out = b""
    for index, chunk in enumerate(split(data, sizes)):
        out += receiver.feed(chunk)
        if receiver.done:
            rest = receiver.take_remaining() + b"".join(split(data, sizes)[index + 1 :])
            break
    else:
        rest = b""
    assert receiver.done == whole.done
    assert out == expected
    assert rest == expected_rest
    assert receiver.size == len(out)
    # never a bare CR or LF in the message
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n")
    if receiver.done:
        assert out == b"" or out.endswith(b"\r\n")
        # the terminator is the first literal CRLF.CRLF (or ".\r\n" at the start)
        end = (b"\r\n" + data).find(b"\r\n.\r\n")
        assert end >= 0 and expected_rest == data[end + 3 :]
    else:
        assert b"\r\n.\r\n" not in b"\r\n" + data


@given(message_bytes, chunk_sizes)
def test_relay_round_trip_through_both(message: bytes, sizes: list[int]) -> None:
    """Client wire -> DataReceiver -> DataSender -> wire -> DataReceiver: a fixed point."""
    sender = DataSender()
    wire = b"".join(sender.feed(chunk) for chunk in split(message, sizes)) + sender.finish()
    receiver = DataReceiver()
    got = b"".join(receiver.feed(chunk) for chunk in split(wire, sizes))
    assert receiver.done and got == normalise(message)
    assert stuff(got) == wire


@given(
    st.lists(st.sampled_from([b"..x\r\n", b"..\r\n", b"y\r\n", b".\n", b"\r"]), max_size=400),
    st.sampled_from([b".\r\nNOOP\r\n", b""]),
    st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=5),
)
def test_dot_heavy_streams_split_independence(
    lines: list[bytes], end: bytes, sizes: list[int]
) -> None:
    """Many dot lines per chunk switch both codecs to their bulk path; results must not move."""
    data = b"".join(lines) + end
    whole = DataReceiver()
    expected = whole.feed(data)
    out, done, rest = receive(*split(data, sizes))
    assert (out, done, rest) == (expected, whole.done, whole.take_remaining())
    sender = DataSender()
    wire = b"".join(sender.feed(chunk) for chunk in split(out, sizes)) + sender.finish()
    assert wire == stuff(out)
    assert unstuff(wire) == normalise(out)


@given(message_bytes, chunk_sizes)
def test_a_sender_told_its_input_is_clean_sends_the_same_without_the_line_end_check(
    message: bytes, sizes: list[int]
) -> None:
    # What a DataReceiver spooled is CRLF-clean: the replay need not count its line ends
    # again (three bytes.count passes a chunk; a third of a large message's CPU).
    received = normalise(message)
    plain, vouched = DataSender(), DataSender(clean=True)
    chunks = split(received, sizes)
    expected = b"".join(plain.feed(chunk) for chunk in chunks) + plain.finish()
    real = data_module._normalise_line_ends
    data_module._normalise_line_ends = _refuse  # type: ignore[assignment]
    try:
        wire = b"".join(vouched.feed(chunk) for chunk in chunks) + vouched.finish()
    finally:
        data_module._normalise_line_ends = real
    assert wire == expected == stuff(received)


def _refuse(data: bytes) -> bytes:
    raise AssertionError("the line ends of a clean input were checked")
