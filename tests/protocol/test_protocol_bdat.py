"""BDAT (RFC 3030): the command, one chunk out of any split of the stream, a message's
chunks against a limit, and the sender's frames read back by the reader."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.errors import LocalProtocolError, RemoteProtocolError
from trio_proxsmtp.protocol.smtp.bdat import (
    MAX_CHUNK_SIZE_DIGITS,
    BdatCommand,
    BdatSender,
    BdatSyntaxError,
    BdatTransfer,
    ChunkReader,
    bdat_command,
    bdat_frames,
    parse_bdat,
)
from trio_proxsmtp.protocol.smtp.commands import Verb, parse_command


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("0 LAST", BdatCommand(0, True)),
        ("1024", BdatCommand(1024, False)),
        ("1024 last", BdatCommand(1024, True)),
        ("  7\tLaSt ", BdatCommand(7, True)),
        ("007", BdatCommand(7, False)),
        ("0", BdatCommand(0, False)),
        ("9" * MAX_CHUNK_SIZE_DIGITS, BdatCommand(int("9" * MAX_CHUNK_SIZE_DIGITS), False)),
    ],
)
def test_parse(argument: str, expected: BdatCommand) -> None:
    assert parse_bdat(argument) == expected


@pytest.mark.parametrize(
    "argument",
    ["", "LAST", "-1", "12 LASTX", "12 LAST extra", "1e3", "0x10", "١٢", "1" * 19, "12 FIRST"],
)
def test_parse_rejects(argument: str) -> None:
    with pytest.raises(BdatSyntaxError) as info:
        parse_bdat(argument)
    assert info.value.reply is not None and info.value.reply.code == 501


def test_parse_takes_the_argument_of_a_parsed_command() -> None:
    command = parse_command(b"bdat 12 LAST\r\n")
    assert command.verb is Verb.BDAT
    assert parse_bdat(command.argument) == BdatCommand(12, True)


@given(st.text(max_size=40))
def test_parse_garbage_raises_only_the_syntax_error(argument: str) -> None:
    try:
        command = parse_bdat(argument)
    except BdatSyntaxError as exc:
        assert isinstance(exc, RemoteProtocolError)
    else:
        assert command.size >= 0
        assert bdat_command(command.size, command.last).startswith(b"BDAT ")


def test_command_bytes() -> None:
    assert bdat_command(0, last=True) == b"BDAT 0 LAST\r\n"
    assert bdat_command(512) == b"BDAT 512\r\n"
    with pytest.raises(LocalProtocolError):
        bdat_command(-1)


# ---- ChunkReader ---------------------------------------------------------------------------


def read_chunk(size: int, pieces: list[bytes]) -> tuple[bytes, bytes, int]:
    """Feed pieces until the chunk is done: (chunk, the bytes after it, feeds used)."""
    reader = ChunkReader(size)
    chunk = b""
    for index, piece in enumerate(pieces):
        if reader.done:
            return chunk, reader.take_remaining() + b"".join(pieces[index:]), index
        chunk += reader.feed(piece)
        assert reader.remaining == size - len(chunk)
    return chunk, reader.take_remaining(), len(pieces)


@given(st.binary(max_size=300), st.binary(max_size=50), st.lists(st.integers(0, 400)))
def test_chunk_is_exact_over_every_split(payload: bytes, after: bytes, cuts: list[int]) -> None:
    """Any bytes (CRLF.CRLF, NUL, 8-bit) and any packet boundaries: exactly `size` bytes."""
    chunk, rest, _ = read_chunk(len(payload), split(payload + after, cuts))
    assert chunk == payload
    assert rest == after


def test_zero_size_chunk_is_done_at_once() -> None:
    reader = ChunkReader(0)
    assert reader.done
    with pytest.raises(LocalProtocolError):
        reader.feed(b"MAIL")


def test_remaining_is_handed_over_once() -> None:
    reader = ChunkReader(3)
    assert reader.feed(b"abcQUIT\r\n") == b"abc"
    assert reader.done
    assert reader.take_remaining() == b"QUIT\r\n"
    assert reader.take_remaining() == b""


# ---- BdatTransfer --------------------------------------------------------------------------


@given(
    st.lists(st.tuples(st.binary(max_size=60), st.booleans()), min_size=1, max_size=6),
    st.integers(0, 200),
    st.lists(st.integers(0, 500)),
)
def test_transfer_of_many_chunks(
    chunks: list[tuple[bytes, bool]], max_size: int, cuts: list[int]
) -> None:
    """Chunks fed over any split: the stored bytes are the message up to the limit."""
    transfer = BdatTransfer(max_size)
    stored = b""
    message = b"".join(c for c, _ in chunks)
    for payload, _ in chunks[:-1]:
        transfer.begin(BdatCommand(len(payload), last=False))
        for piece in split(payload, cuts):
            if piece:
                stored += transfer.feed(piece)
        assert not transfer.in_chunk and not transfer.finished
    last = chunks[-1][0]
    transfer.begin(BdatCommand(len(last), last=True))
    pieces = split(last + b"QUIT\r\n", cuts)
    while not transfer.finished:
        stored += transfer.feed(pieces.pop(0))
    assert transfer.take_remaining() + b"".join(pieces) == b"QUIT\r\n"
    assert transfer.chunks == [len(c) for c, _ in chunks]
    assert transfer.size == len(message)
    assert transfer.too_big == (max_size > 0 and len(message) > max_size)
    assert stored == (message[:max_size] if transfer.too_big else message)


def test_transfer_order_is_enforced() -> None:
    transfer = BdatTransfer()
    with pytest.raises(LocalProtocolError):
        transfer.feed(b"x")
    transfer.begin(BdatCommand(2, last=False))
    with pytest.raises(LocalProtocolError):
        transfer.begin(BdatCommand(1, last=True))  # the first chunk is not over
    assert transfer.feed(b"ab") == b"ab"
    transfer.begin(BdatCommand(0, last=True))
    assert transfer.finished and transfer.chunks == [2, 0]
    with pytest.raises(LocalProtocolError):
        transfer.begin(BdatCommand(1, last=True))


def test_transfer_pipelined_bytes_after_the_last_chunk() -> None:
    transfer = BdatTransfer()
    transfer.begin(BdatCommand(4, last=True))
    assert transfer.feed(b"bodyQUIT\r\n") == b"body"
    assert transfer.finished
    assert transfer.take_remaining() == b"QUIT\r\n"


# ---- BdatSender ----------------------------------------------------------------------------


def read_frames(wire: bytes) -> tuple[bytes, list[BdatCommand]]:
    """What a server reads from `wire`: the message and the commands, LAST last."""
    message, commands = b"", []
    while wire:
        line, _, wire = wire.partition(b"\r\n")
        assert line.startswith(b"BDAT ")
        command = parse_bdat(line[5:].decode())
        commands.append(command)
        reader = ChunkReader(command.size)
        if not reader.done:
            message += reader.feed(wire)
        wire = reader.take_remaining()
        assert reader.done
    return message, commands


@given(st.binary(max_size=400), st.integers(1, 64), st.lists(st.integers(0, 500)))
def test_sender_frames_read_back_over_every_split(
    message: bytes, chunk_size: int, cuts: list[int]
) -> None:
    sender = BdatSender(chunk_size)
    frames: list[bytes] = []
    for piece in split(message, cuts):
        frames += sender.feed(piece)
    frames.append(sender.finish())
    assert frames == bdat_frames(message, chunk_size)  # independent of the split
    received, commands = read_frames(b"".join(frames))
    assert received == message  # byte-exact: no stuffing, no line-end rewrite
    assert [c.last for c in commands] == [False] * (len(commands) - 1) + [True]
    assert all(c.size == chunk_size for c in commands[:-1])
    assert 0 < commands[-1].size <= chunk_size or (message == b"" and commands[-1].size == 0)
    assert len(commands) == max(1, -(-len(message) // chunk_size))


def test_sender_edges() -> None:
    assert bdat_frames(b"") == [b"BDAT 0 LAST\r\n"]
    assert bdat_frames(b"abcd", 2) == [b"BDAT 2\r\nab", b"BDAT 2 LAST\r\ncd"]
    assert bdat_frames(b".\r\n", 10) == [b"BDAT 3 LAST\r\n.\r\n"]
    sender = BdatSender(2)
    sender.finish()
    with pytest.raises(LocalProtocolError):
        sender.feed(b"x")
    with pytest.raises(LocalProtocolError):
        sender.finish()
    with pytest.raises(LocalProtocolError):
        BdatSender(0)
