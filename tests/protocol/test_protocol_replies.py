"""Reply values, the upstream reply parser and the spec §9.7 text normalisation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.errors import RemoteProtocolError
from trio_proxsmtp.protocol.smtp.replies import Reply, reply_from_text
from trio_proxsmtp.protocol.smtp.reply_parser import ReplyParser


def parse_all(data: bytes, **kwargs: int) -> list[Reply]:
    parser = ReplyParser(**kwargs)
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    return replies


# ---- Reply -------------------------------------------------------------------------------


def test_to_bytes_single_and_multi() -> None:
    assert Reply.single(250, "ok").to_bytes() == b"250 ok\r\n"
    assert Reply(250, ("a", "b")).to_bytes() == b"250-a\r\n250 b\r\n"


def test_to_bytes_empty_text() -> None:
    # The final line keeps its space (clients such as swaks look for "NNN ").
    assert Reply(250, ("",)).to_bytes() == b"250 \r\n"
    assert Reply(250, ("", "x", "")).to_bytes() == b"250-\r\n250-x\r\n250 \r\n"


def test_to_bytes_is_byte_exact_for_8bit_text() -> None:
    raw = b"250 caf\xc3\xa9 \xff\xfe\r\n"
    (reply,) = parse_all(raw)
    assert reply.to_bytes() == raw


@pytest.mark.parametrize(
    ("code", "flags"),
    [
        (250, (True, False, False, False)),
        (354, (False, True, False, False)),
        (451, (False, False, True, False)),
        (550, (False, False, False, True)),
    ],
)
def test_classification(code: int, flags: tuple[bool, bool, bool, bool]) -> None:
    reply = Reply.single(code, "x")
    assert (
        reply.is_positive,
        reply.is_intermediate,
        reply.is_transient,
        reply.is_permanent,
    ) == flags


def test_text_for_logs() -> None:
    assert Reply.single(550, "5.1.1 no such user").text == "550 5.1.1 no such user"
    assert Reply(250, ("a", "b")).text == "250 a / b"
    assert Reply(250, ("",)).text == "250"


@pytest.mark.parametrize("code", [0, 99, 600, 999])
def test_code_range_is_enforced(code: int) -> None:
    with pytest.raises(ValueError):
        Reply.single(code, "x")


def test_text_must_be_wire_encodable() -> None:
    assert Reply.single(250, "\udcff").to_bytes() == b"250 \xff\r\n"  # surrogate-escaped byte
    with pytest.raises(ValueError):
        Reply.single(250, "\ud800")  # a lone surrogate that stands for no byte


def test_no_empty_reply_and_no_line_breaks() -> None:
    with pytest.raises(ValueError):
        Reply(250, ())
    with pytest.raises(ValueError):
        Reply.single(250, "a\r\n250 injected")


# ---- ReplyParser -------------------------------------------------------------------------


def test_single_line_replies() -> None:
    assert parse_all(b"220 host ESMTP\r\n250 ok\n") == [
        Reply(220, ("host ESMTP",)),
        Reply(250, ("ok",)),
    ]


def test_bare_code_line() -> None:
    assert parse_all(b"250\r\n") == [Reply(250, ("",))]


def test_multi_line_reply() -> None:
    data = b"250-mx.example\r\n250-SIZE 100\r\n250-\r\n250 DSN\r\n"
    assert parse_all(data) == [Reply(250, ("mx.example", "SIZE 100", "", "DSN"))]


def test_partial_reply_waits_for_final_line() -> None:
    parser = ReplyParser()
    parser.feed(b"250-a\r\n250-b\r\n25")
    assert parser.next_reply() is None
    parser.feed(b"0 c\r\n")
    assert parser.next_reply() == Reply(250, ("a", "b", "c"))
    assert parser.next_reply() is None


@pytest.mark.parametrize(
    "line",
    [
        b"hello\r\n",
        b"25 x\r\n",
        b"2500 x\r\n",
        b"250x\r\n",
        b" 250 x\r\n",
        b"099 x\r\n",
        b"600 x\r\n",
        b"\r\n",
        b"\xff\xff\xff\r\n",
    ],
)
def test_bad_code_is_remote_error(line: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_all(line)
    assert info.value.reply == Reply(451, ("Local Error",))


def test_mixed_codes_are_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="differs"):
        parse_all(b"250-a\r\n550 b\r\n")


def test_too_many_lines() -> None:
    ok = b"250-x\r\n" * 4 + b"250 y\r\n"
    assert len(parse_all(ok, max_lines=5)[0].lines) == 5
    with pytest.raises(RemoteProtocolError, match="more than 5 lines"):
        parse_all(b"250-x\r\n" * 5 + b"250 y\r\n", max_lines=5)


def test_too_long_line() -> None:
    assert parse_all(b"250 " + b"a" * 94 + b"\r\n", max_line=100)
    with pytest.raises(RemoteProtocolError, match="too long"):
        parse_all(b"250 " + b"a" * 95 + b"\r\n", max_line=100)


def test_error_is_sticky() -> None:
    parser = ReplyParser()
    parser.feed(b"garbage\r\n")
    with pytest.raises(RemoteProtocolError):
        parser.next_reply()
    parser.feed(b"250 ok\r\n")
    with pytest.raises(RemoteProtocolError):
        parser.next_reply()


def test_stray_cr_inside_a_line_cannot_inject() -> None:
    (reply,) = parse_all(b"250 a\rb\r\n")
    assert reply.to_bytes().count(b"\r") == 1


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=200))
def test_random_bytes_raise_only_remote_errors(data: bytes, cut: int) -> None:
    parser = ReplyParser(max_line=64, max_lines=5)
    try:
        parser.feed(data[:cut])
        while parser.next_reply() is not None:
            pass
        parser.feed(data[cut:])
        while parser.next_reply() is not None:
            pass
    except RemoteProtocolError:
        pass


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=100, max_value=599),
            st.lists(
                st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n")),
                min_size=1,
            ),
        ),
        max_size=5,
    ),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_round_trip_and_split_independence(
    specs: list[tuple[int, list[str]]], cuts: list[int]
) -> None:
    replies = [Reply(code, tuple(lines)) for code, lines in specs]
    wire = b"".join(reply.to_bytes() for reply in replies)
    points = sorted({c % (len(wire) + 1) for c in cuts})
    parser = ReplyParser(max_line=100_000, max_lines=1000)
    got = []
    for a, b in zip([0, *points], [*points, len(wire)], strict=True):
        parser.feed(wire[a:b])
        while (reply := parser.next_reply()) is not None:
            got.append(reply)
    assert got == replies


# ---- reply_from_text (spec §9.7 table, B8 fixed) -------------------------------------------


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("550 Bad Email", b"550 Bad Email\r\n"),
        ("451 4.7.1 Try later", b"451 4.7.1 Try later\r\n"),
        ("250 Dropped silently", b"250 Dropped silently\r\n"),
        ("Virus found", b"550 Content Rejected; Virus found\r\n"),
        ("", b"550 Content Rejected; Content Rejected\r\n"),
        ("  \t ", b"550 Content Rejected; Content Rejected\r\n"),
        ("   554 leading spaces", b"554 leading spaces\r\n"),
        ("550-5.7.1 multi", b"550 5.7.1 multi\r\n"),  # B8: a final line, not a continuation
        ("250", b"250 \r\n"),
        ("Go away", b"550 Content Rejected; Go away\r\n"),
        ("5550 x", b"550 Content Rejected; 5550 x\r\n"),
        ("999 x", b"550 Content Rejected; 999 x\r\n"),
        ("099 x", b"550 Content Rejected; 099 x\r\n"),
        ("55x y", b"550 Content Rejected; 55x y\r\n"),
    ],
)
def test_reply_from_text_table(text: str, wire: bytes) -> None:
    assert reply_from_text(text).to_bytes() == wire


def test_reply_from_text_bare_code() -> None:
    assert reply_from_text("250") == Reply(250, ("",))


def test_reply_from_text_caps_long_text_to_512_bytes() -> None:
    wire = reply_from_text("5" * 600).to_bytes()
    assert wire.startswith(b"550 Content Rejected; 5555")
    assert len(wire) == 512
    coded = reply_from_text("554 " + "x" * 600).to_bytes()
    assert coded.startswith(b"554 xxx") and len(coded) == 512


def test_reply_from_text_cap_does_not_split_characters() -> None:
    wire = reply_from_text("é" * 400).to_bytes()
    assert len(wire) <= 512
    wire.decode("utf-8")  # a cut inside a 2-byte character would not decode


def test_reply_from_text_line_breaks_cannot_inject() -> None:
    reply = reply_from_text("550 a\r\n250 b")
    assert reply.to_bytes() == b"550 a  250 b\r\n"


@given(st.text())
def test_reply_from_text_always_one_bounded_line(text: str) -> None:
    wire = reply_from_text(text).to_bytes()
    assert wire.endswith(b"\r\n") and wire.count(b"\n") == 1 and wire.count(b"\r") == 1
    assert len(wire) <= 512


def _to_bytes_general(reply: Reply) -> bytes:
    """The wire form built line by line (to_bytes has a shortcut for one line)."""
    lines = [f"{reply.code}-{text}\r\n" for text in reply.lines[:-1]]
    lines.append(f"{reply.code} {reply.lines[-1]}\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


_REPLY_LINE = st.builds(
    lambda code, sep, text, end: b"%d%s%s%s" % (code, sep, text, end),
    st.integers(min_value=100, max_value=599),
    st.sampled_from([b" ", b"-", b""]),
    st.binary(max_size=30),
    st.sampled_from([b"\r\n", b"\n"]),
)
_UPSTREAM_BYTES = st.lists(st.one_of(_REPLY_LINE, st.binary(max_size=8)), max_size=8).map(b"".join)


@given(_UPSTREAM_BYTES, st.integers(min_value=0, max_value=300))
def test_parsed_replies_pass_the_validators(data: bytes, cut: int) -> None:
    """A parsed reply is built without re-running the validators: any bytes, any split,
    it equals the reply the validating constructor builds, with the same wire form."""
    parser = ReplyParser(max_line=128, max_lines=8)
    replies: list[Reply] = []
    try:
        for piece in (data[:cut], data[cut:]):
            parser.feed(piece)
            while (reply := parser.next_reply()) is not None:
                replies.append(reply)
    except RemoteProtocolError:
        pass
    for reply in replies:
        assert Reply(reply.code, reply.lines) == reply
        assert reply.to_bytes() == _to_bytes_general(reply)


@given(
    st.integers(min_value=100, max_value=599),
    st.lists(
        st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n")),
        min_size=1,
        max_size=3,
    ),
)
def test_to_bytes_shortcut_matches_the_general_form(code: int, lines: list[str]) -> None:
    reply = Reply(code, tuple(lines))
    assert reply.to_bytes() == _to_bytes_general(reply)
