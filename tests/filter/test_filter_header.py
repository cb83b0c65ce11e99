"""Header option: expansion (spec §10.2, §10.4 with the B9 fix) and placement (§10.3)."""

from __future__ import annotations

import datetime
import email.utils
import itertools
import zoneinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.message.header import (
    MAX_HEADER,
    HeaderInserter,
    expand_header,
    format_date,
)

NOW = datetime.datetime(2026, 11, 26, 7, 52, 15, tzinfo=datetime.UTC)


def expand(template: str, now: datetime.datetime = NOW) -> tuple[bytes, list[str]]:
    return expand_header(template, client="192.0.2.7", local="127.0.0.1", now=now)


def insert(header: bytes, message: bytes) -> bytes:
    inserter = HeaderInserter(header)
    return inserter.feed(message) + inserter.finish()


# --- format_date -------------------------------------------------------------------------


def test_date_utc() -> None:
    assert format_date(NOW) == "Thu, 26 Nov 2026 07:52:15 +0000"


def test_date_kolkata_has_correct_half_hour_offset() -> None:
    now = datetime.datetime(2026, 11, 26, 7, 52, 15, tzinfo=zoneinfo.ZoneInfo("Asia/Kolkata"))
    assert format_date(now) == "Thu, 26 Nov 2026 07:52:15 +0530"


def test_date_negative_half_hour_zone() -> None:
    now = datetime.datetime(2026, 1, 5, 23, 1, 2, tzinfo=zoneinfo.ZoneInfo("America/St_Johns"))
    assert format_date(now) == "Mon, 05 Jan 2026 23:01:02 -0330"


def test_date_is_parseable_rfc5322() -> None:
    now = datetime.datetime(2026, 3, 1, 0, 0, 9, tzinfo=zoneinfo.ZoneInfo("America/St_Johns"))
    assert email.utils.parsedate_to_datetime(format_date(now)) == now


def test_date_needs_aware_datetime() -> None:
    with pytest.raises(ValueError):
        format_date(datetime.datetime(2026, 1, 1))


# --- expand_header -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("X-A: one\\r\\nX-B: two", b"X-A: one\r\nX-B: two"),
        ("X-T: a\\tb", b"X-T: a\tb"),
        ("X-S: \\\\ \\q \\%", b"X-S: \\ q %"),
        ("X-E: end\\", b"X-E: end\\"),
        ("X-P: 100%%", b"X-P: 100%"),
        ("X-L: bare\\nline", b"X-L: bare\r\nline"),
        ("X-C: keep\\r\\n\\r\\n", b"X-C: keep"),
        ("X-Z: 50%", b"X-Z: 50%"),
    ],
)
def test_escapes(template: str, expected: bytes) -> None:
    assert expand(template) == (expected, [])


def test_t29_escape_table() -> None:
    header, warnings = expand("X-A: one\\r\\nX-B: two\\tT \\\\ \\q %% %x")
    assert header == b"X-A: one\r\nX-B: two\tT \\ q % "
    assert warnings == ["invalid header symbol: %x"]


def test_symbols_client_local_date() -> None:
    header, warnings = expand("X-F: %i %l %d")
    assert header == b"X-F: 192.0.2.7 127.0.0.1 Thu, 26 Nov 2026 07:52:15 +0000"
    assert warnings == []


def test_unknown_symbols_dropped_with_one_warning_each() -> None:
    header, warnings = expand("X: a%qb%Zc")
    assert header == b"X: abc"
    assert warnings == ["invalid header symbol: %q", "invalid header symbol: %Z"]


def test_unix_client_is_empty() -> None:
    header, _ = expand_header("X: [%i] %l", client="", local="/run/p.sock", now=NOW)
    assert header == b"X: [] /run/p.sock"


def test_capped_at_1023_bytes() -> None:
    header, _ = expand("X-Long: " + "a" * 2000)
    assert len(header) == MAX_HEADER == 1023
    assert header.startswith(b"X-Long: aaa")


def test_cap_never_leaves_a_dangling_cr() -> None:
    template = "X: " + "a" * (MAX_HEADER - 4) + "\\r\\nY: b"
    header, _ = expand(template)
    assert not header.endswith(b"\r")
    assert len(header) <= MAX_HEADER


# --- HeaderInserter ----------------------------------------------------------------------

MSG = b"Subject: t\r\nX-2: y\r\n\r\nbody\r\n\r\nmore\r\n"


def test_t27_before_first_blank_line_only() -> None:
    out = insert(b"X-F: 1", MSG)
    assert out == b"Subject: t\r\nX-2: y\r\nX-F: 1\r\n\r\nbody\r\n\r\nmore\r\n"


def test_t28_received_is_prepended() -> None:
    out = insert(b"Received: from 192.0.2.7", MSG)
    assert out == b"Received: from 192.0.2.7\r\n" + MSG


def test_received_is_case_insensitive() -> None:
    assert insert(b"RECEIVED: x", b"a: b\r\n\r\n") == b"RECEIVED: x\r\na: b\r\n\r\n"


def test_whitespace_only_line_counts_as_blank() -> None:
    out = insert(b"X: h", b"A: 1\r\n \t \r\nbody\r\n")
    assert out == b"A: 1\r\nX: h\r\n \t \r\nbody\r\n"


def test_bare_lf_blank_line_counts() -> None:
    assert insert(b"X: h", b"A: 1\n\nbody\n") == b"A: 1\nX: h\r\n\nbody\n"


def test_message_starting_with_blank_line() -> None:
    assert insert(b"X: h", b"\r\nbody\r\n") == b"X: h\r\n\r\nbody\r\n"


def test_no_blank_line_appends_at_end() -> None:
    assert insert(b"X: h", b"A: 1\r\nB: 2\r\n") == b"A: 1\r\nB: 2\r\nX: h\r\n"


def test_no_blank_line_and_no_final_newline() -> None:
    assert insert(b"X: h", b"A: 1\r\nB: 2") == b"A: 1\r\nB: 2\r\nX: h\r\n"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # The body starts without the blank line (CPython's msg_35): before it, so a
        # signer's body hash still holds (docs/behaviour.md §7.2).
        (b"A: 1\r\nB: 2\r\nno blank line\r\nbody\r\n", b"A: 1\r\nB: 2\r\nX: h\r\nno blank"),
        (b"A: 1\r\n folded\r\n\tagain\r\nbody\r\n", b"A: 1\r\n folded\r\n\tagain\r\nX: h\r\nbody"),
        (b"From someone Fri Apr 06\r\nA: 1\r\n\r\n", b"X: h\r\nFrom someone"),  # mbox line
        (b" starts folded\r\nA: 1\r\n\r\n", b"X: h\r\n starts folded"),  # nothing to fold
        (b": no name\r\n\r\n", b"X: h\r\n: no name"),
        (b"A\x80: 1\r\n\r\n", b"X: h\r\nA\x80: 1"),
        (b"A: 1\r\nno colon", b"A: 1\r\nX: h\r\nno colon"),
        (b"A: 1\r\nname-without-colon", b"A: 1\r\nX: h\r\nname-without-colon"),
        (b"A: 1\r\n" + b"n" * 999 + b": v\r\n", b"A: 1\r\nX: h\r\nnnn"),  # too long a name
    ],
)
def test_a_line_that_is_no_field_ends_the_header(message: bytes, expected: bytes) -> None:
    out = insert(b"X: h", message)
    assert out.startswith(expected)
    assert out.replace(b"X: h\r\n", b"", 1) == message


def test_streaming_holds_back_a_name_until_its_colon() -> None:
    inserter = HeaderInserter(b"X: h")
    assert inserter.feed(b"Subj") == b""
    assert inserter.feed(b"ect: x\r\nBody") == b"Subject: x\r\n"
    assert inserter.feed(b" text\r\n") == b"X: h\r\nBody text\r\n"
    assert inserter.finish() == b""


def test_final_whitespace_partial_line_is_blank() -> None:
    assert insert(b"X: h", b"A: 1\r\n  ") == b"A: 1\r\nX: h\r\n  "


def test_empty_message_gets_header() -> None:
    assert insert(b"X: h", b"") == b"X: h\r\n"
    assert insert(b"Received: r", b"") == b"Received: r\r\n"


def test_streaming_holds_back_only_whitespace() -> None:
    inserter = HeaderInserter(b"X: h")
    assert inserter.feed(b"Subject: partial") == b"Subject: partial"
    assert inserter.feed(b" line\r\n  ") == b" line\r\n"  # the "  " may start a blank line
    assert inserter.feed(b"\r\nbody") == b"X: h\r\n  \r\nbody"
    assert inserter.feed(b"\r\n\r\n") == b"\r\n\r\n"
    assert inserter.finish() == b""


_line = st.one_of(
    st.sampled_from([b"\r\n", b"  \r\n", b"\n", b"\t\n", b" ", b"\r"]),
    st.binary(max_size=12),
)


@given(
    header=st.sampled_from([b"X-F: 1", b"Received: by x", b"X-A: 1\r\nX-B: 2"]),
    parts=st.lists(_line, max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_output_independent_of_split(header: bytes, parts: list[bytes], cuts: list[int]) -> None:
    message = b"".join(parts)
    whole = insert(header, message)
    inserter = HeaderInserter(header)
    out = bytearray()
    points = sorted({c for c in cuts if c <= len(message)} | {0, len(message)})
    for start, end in itertools.pairwise(points):
        out += inserter.feed(message[start:end])
    out += inserter.finish()
    assert bytes(out) == whole
    # The header appears exactly once, and removing it gives back the message.
    assert whole.count(header + b"\r\n") >= 1
    index = whole.find(header + b"\r\n")
    restored = whole[:index] + whole[index + len(header) + 2 :]
    assert restored in (message, message + b"\r\n")
