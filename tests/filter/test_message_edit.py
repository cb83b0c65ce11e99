"""End-of-message modifications: header rules of the milter protocol, body, envelope."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.message.edit import (
    QUARANTINE_HEADER,
    MilterEnvelope,
    Recipient,
    apply_modifications,
    read_message,
)
from trio_proxsmtp.protocol.milter.messages import (
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    InsertHeader,
    Modification,
    Quarantine,
    ReplaceBody,
)
from trio_proxsmtp.stages.spool import Spool

MESSAGE = b"Received: one\r\nSubject: hello\r\nReceived: two\r\n\tfolded\r\n\r\nbody line\r\n"
ENVELOPE = MilterEnvelope("a@example.com", (Recipient("b@example.org"), Recipient("c@example.org")))


def edit(mods: list[Modification], message: bytes = MESSAGE) -> tuple[bytes, MilterEnvelope]:
    edited, envelope = apply_modifications(read_message(lambda: [message]), ENVELOPE, mods)
    return b"".join(edited.chunks()), envelope


def test_headers_are_parsed_with_their_folds_and_values_as_milters_get_them() -> None:
    message = read_message(lambda: [MESSAGE])
    assert [(h.name, h.value) for h in message.headers] == [
        ("Received", "one"),
        ("Subject", "hello"),
        ("Received", "two\n\tfolded"),
    ]
    assert b"".join(message.body_chunks()) == b"body line\r\n"
    assert b"".join(message.chunks()) == MESSAGE


def test_add_header_goes_after_the_last_one() -> None:
    out, _ = edit([AddHeader("X-Spam", "no")])
    assert out == MESSAGE.replace(b"folded\r\n\r\n", b"folded\r\nX-Spam: no\r\n\r\n")


def test_insert_header_at_index() -> None:
    out, _ = edit([InsertHeader(0, "DKIM-Signature", "v=1;\n\tb=x"), InsertHeader(2, "X-A", "a")])
    assert out.startswith(b"DKIM-Signature: v=1;\r\n\tb=x\r\nReceived: one\r\nX-A: a\r\nSubject")
    out, _ = edit([InsertHeader(99, "X-Last", "z")])
    assert b"folded\r\nX-Last: z\r\n\r\n" in out


def test_change_header_counts_same_named_fields_from_one() -> None:
    out, _ = edit([ChangeHeader(2, "received", "TWO")])
    assert out == MESSAGE.replace(b"Received: two\r\n\tfolded\r\n", b"Received: TWO\r\n")
    out, _ = edit([ChangeHeader(1, "Received", "")])  # empty value deletes
    assert out == MESSAGE.replace(b"Received: one\r\n", b"")
    out, _ = edit([ChangeHeader(3, "Received", "")])  # no third one: nothing to delete
    assert out == MESSAGE
    out, _ = edit([ChangeHeader(1, "X-New", "added")])  # missing: added, as Sendmail does
    assert b"folded\r\nX-New: added\r\n\r\nbody" in out


def test_replace_body_pieces_in_order_with_crlf() -> None:
    out, _ = edit([ReplaceBody(b"new\nbo"), ReplaceBody(b"dy\n")])
    assert out == MESSAGE.replace(b"body line\r\n", b"new\r\nbody\r\n")


def test_envelope_changes() -> None:
    mods: list[Modification] = [
        ChangeSender("<bounce@example.com>", "SIZE=10"),
        DeleteRecipient("<B@example.org>"),
        AddRecipient("<d@example.org>"),
        AddRecipient("<e@example.org>", "NOTIFY=NEVER"),
        AddRecipient("c@example.org"),  # already there
    ]
    out, envelope = edit(mods)
    assert out == MESSAGE
    assert envelope == MilterEnvelope(
        "bounce@example.com",
        (
            Recipient("c@example.org"),
            Recipient("d@example.org"),
            Recipient("e@example.org", ("NOTIFY=NEVER",)),
        ),
        ("SIZE=10",),
    )


def test_quarantine_is_a_header() -> None:
    out, _ = edit([Quarantine("looks like spam"), Quarantine("really")])
    assert out.count(QUARANTINE_HEADER.encode()) == 1
    assert f"{QUARANTINE_HEADER}: really\r\n\r\n".encode() in out


def test_message_without_headers_or_blank_line() -> None:
    no_headers = b"\r\njust a body\r\n"
    assert edit([AddHeader("X", "1")])[0].endswith(b"X: 1\r\n\r\nbody line\r\n")
    assert edit([AddHeader("X", "1")], no_headers)[0] == b"X: 1\r\n\r\njust a body\r\n"
    not_a_header = b"Subject: x\r\nthis is body\r\n"
    assert edit([], not_a_header)[0] == not_a_header
    assert edit([AddHeader("X", "1")], not_a_header)[0] == (
        b"Subject: x\r\nX: 1\r\nthis is body\r\n"
    )


line = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(str.encode)
header = st.builds(
    lambda name, value, folds: name + b": " + value + b"".join(b"\r\n\t" + f for f in folds),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"),
            min_size=1, max_size=10).map(str.encode),
    line,
    st.lists(line, max_size=2),
)  # fmt: skip


@given(
    st.lists(header, max_size=6),
    st.lists(line, max_size=6),
    st.lists(st.integers(1, 400), max_size=6),
)
def test_unmodified_message_comes_out_byte_for_byte_whatever_the_chunks(
    headers: list[bytes], body: list[bytes], cuts: list[int]
) -> None:
    message = b"".join(h + b"\r\n" for h in headers) + b"\r\n" + b"".join(b + b"\r\n" for b in body)
    points = sorted({min(c, len(message)) for c in cuts})
    chunks = [message[a:b] for a, b in zip([0, *points], [*points, len(message)], strict=True)]
    edited = read_message(lambda: chunks)
    assert len(edited.headers) == len(headers)
    assert b"".join(edited.chunks()) == message


def test_a_big_spooled_body_is_streamed_not_loaded(tmp_path: Path) -> None:
    with Spool.create(str(tmp_path)) as spool:
        spool.write(b"Subject: big\r\n\r\n")
        for _ in range(40):
            spool.write(b"x" * 65534 + b"\r\n")
        spool.finish()
        edited, _ = apply_modifications(
            read_message(lambda: spool.chunks(65536)), ENVELOPE, [AddHeader("X-Big", "yes")]
        )
        sizes = [len(c) for c in edited.body_chunks()]
        assert max(sizes) <= 65536
        assert sum(sizes) == 40 * 65536
        assert edited.header_bytes() == b"Subject: big\r\nX-Big: yes\r\n\r\n"
