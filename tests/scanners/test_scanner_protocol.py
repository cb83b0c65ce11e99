"""The sans-IO scanner parts (docs/behaviour.md §11.16): the SPAMC request and spamd's
answer, clamd's zINSTREAM frames and reply, and how verdicts combine."""

from __future__ import annotations

import pytest

from trio_proxsmtp.protocol.scanners.clamd import (
    END_OF_STREAM,
    ClamdAnswer,
    instream_chunk,
    parse_clamd_reply,
)
from trio_proxsmtp.protocol.scanners.errors import ScannerProtocolError
from trio_proxsmtp.protocol.scanners.spamc import parse_spamd_answer, spam_headers, spamc_request
from trio_proxsmtp.protocol.scanners.verdict import (
    SCANNER_TEMPFAIL,
    SPAM_REJECT,
    Outcome,
    ScanKind,
    ScanResult,
    combine,
    virus_reply,
)

BODY = (
    b"Received: from x\r\nSubject: hi\r\n"
    b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=7.2 required=5.0\r\n"
    b"\ttests=GTUBE autolearn=no\r\nX-Spam-Level: *******\r\n\r\n"
)


def answer(body: bytes = BODY, spam: str = "True ; 7.2 / 5.0", status: bytes = b"0 EX_OK") -> bytes:
    head = b"SPAMD/1.1 " + status + b"\r\nContent-length: %d\r\nSpam: %s\r\n\r\n"
    return head % (len(body), spam.encode()) + body


def test_request_names_the_size_and_the_user() -> None:
    assert spamc_request(42, "amavis") == (
        b"HEADERS SPAMC/1.5\r\nContent-length: 42\r\nUser: amavis\r\n\r\n"
    )
    assert spamc_request(7) == b"HEADERS SPAMC/1.5\r\nContent-length: 7\r\n\r\n"
    with pytest.raises(ValueError, match="invalid spamd user"):
        spamc_request(1, "a\r\nSpam: no")


def test_answer_gives_score_threshold_and_only_the_x_spam_fields_folded() -> None:
    parsed = parse_spamd_answer(answer())
    assert (parsed.spam, parsed.score, parsed.threshold, parsed.note) == (True, 7.2, 5.0, "7.2/5.0")
    assert parsed.headers == (
        b"X-Spam-Flag: YES\r\n",
        b"X-Spam-Status: Yes, score=7.2 required=5.0\r\n\ttests=GTUBE autolearn=no\r\n",
        b"X-Spam-Level: *******\r\n",
    )


def test_a_clean_answer_and_a_negative_score() -> None:
    parsed = parse_spamd_answer(answer(b"X-Spam-Status: No\r\n\r\n", "False ; -1.9 / 5.0"))
    assert (parsed.spam, parsed.score, parsed.note) == (False, -1.9, "-1.9/5.0")


def test_header_fields_stop_at_the_blank_line_and_take_lf_only_input() -> None:
    section = b"X-Spam-A: 1\nSubject: x\n\nX-Spam-Body: not a header\n"
    assert spam_headers(section) == (b"X-Spam-A: 1\r\n",)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "ended before"),
        (b"HTTP/1.0 200 OK\r\n\r\n", "not a SPAMD answer"),
        (answer(status=b"76 EX_PROTOCOL"), "error 76"),
        (answer(spam="maybe"), "no readable Spam"),
        (answer()[:-5], "not its Content-length"),
        (b"SPAMD/1.1 0 EX_OK\r\nno colon\r\n\r\n", "bad header line"),
    ],
)
def test_garbage_and_cut_answers_are_protocol_errors(data: bytes, error: str) -> None:
    with pytest.raises(ScannerProtocolError, match=error):
        parse_spamd_answer(data)


def test_instream_frames() -> None:
    assert instream_chunk(b"abc") == b"\0\0\0\x03abc"
    assert END_OF_STREAM == b"\0\0\0\0"
    with pytest.raises(ValueError):
        instream_chunk(b"")


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"stream: OK\0", ClamdAnswer()),
        (b"stream: Eicar-Test-Signature FOUND\0", ClamdAnswer("Eicar-Test-Signature")),
        (b"stream: Win.Test.Foo FOUND\n", ClamdAnswer("Win.Test.Foo")),
    ],
)
def test_clamd_replies(reply: bytes, expected: ClamdAnswer) -> None:
    assert parse_clamd_reply(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        b"INSTREAM size limit exceeded. ERROR\0",
        b"stream: Can't allocate memory ERROR\0",
        b"",
        b"stream: FOUND\0",
        b"\x00\x01garbage",
    ],
)
def test_clamd_errors_are_protocol_errors(reply: bytes) -> None:
    with pytest.raises(ScannerProtocolError):
        parse_clamd_reply(reply)


SPAM = ScanResult("spamd", ScanKind.REJECT, "7.2/5.0", SPAM_REJECT)
VIRUS = ScanResult("clamd", ScanKind.REJECT, "Eicar FOUND", virus_reply("Eicar"))
DOWN = ScanResult("clamd", ScanKind.FAILED, "failed (cannot connect)")
TAGGED = ScanResult("spamd", ScanKind.PASS, "2.0/5.0", headers=(b"X-Spam-Status: No\r\n",))
CLEAN = ScanResult("clamd", ScanKind.PASS, "OK")


def test_a_reject_wins_the_first_in_order() -> None:
    assert combine([DOWN, VIRUS, SPAM], failure_accepts=False) == (
        combine([VIRUS], failure_accepts=False)
    )
    verdict = combine([SPAM, VIRUS], failure_accepts=False)
    assert (verdict.outcome, verdict.reply, verdict.decided) == (
        Outcome.REJECT,
        SPAM_REJECT,
        "spamd:7.2/5.0",
    )
    assert virus_reply("Eicar").to_bytes() == b"554 5.7.1 Virus found: Eicar\r\n"


def test_a_failure_is_a_tempfail_or_with_accept_a_pass_that_adds_nothing_of_its_own() -> None:
    failed = combine([TAGGED, DOWN], failure_accepts=False)
    assert (failed.outcome, failed.reply, failed.decided) == (
        Outcome.TEMPFAIL,
        SCANNER_TEMPFAIL,
        "clamd:failed (cannot connect)",
    )
    assert SCANNER_TEMPFAIL.code == 451 and SCANNER_TEMPFAIL.lines[0].startswith("4.7.1 ")
    accepted = combine([TAGGED, DOWN], failure_accepts=True)
    assert (accepted.outcome, accepted.headers) == (Outcome.ACCEPT, TAGGED.headers)


def test_a_pass_adds_every_scanners_headers_and_names_every_result() -> None:
    verdict = combine([CLEAN, TAGGED], failure_accepts=False)
    assert verdict.outcome is Outcome.ACCEPT and verdict.reply is None
    assert verdict.headers == (b"X-Spam-Status: No\r\n",)
    assert verdict.decided == "clamd:OK spamd:2.0/5.0"


FORGED = (
    b"Received: x\r\nX-Spam-Flag: NO\r\nX-SPAM-Status: No,\r\n\tforged=yes\r\n"
    b"Subject: s\r\n x-spam-folded: kept as Subject's continuation\r\n"
    b"X-Spammy: not a field of spamd's\r\n\r\nX-Spam-Flag: in the body\r\n"
)
STRIPPED = (
    b"Received: x\r\nSubject: s\r\n x-spam-folded: kept as Subject's continuation\r\n"
    b"X-Spammy: not a field of spamd's\r\n\r\nX-Spam-Flag: in the body\r\n"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_senders_x_spam_fields_are_stripped_however_split(size: int) -> None:
    from trio_proxsmtp.protocol.message.strip import HeaderFieldStripper

    stripper = HeaderFieldStripper(b"X-Spam-")
    out = b"".join(stripper.feed(FORGED[i : i + size]) for i in range(0, len(FORGED), size))
    assert out + stripper.finish() == STRIPPED


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_a_body_without_a_blank_line_before_it_is_never_stripped(size: int) -> None:
    # The header ends at a line that is no field, as the Header option and edit.py read it.
    from trio_proxsmtp.protocol.message.strip import HeaderFieldStripper

    message = b"Subject: a\r\nbody text\r\nX-Spam-Flag: YES\r\nmore\r\n"
    stripper = HeaderFieldStripper(b"X-Spam-")
    out = b"".join(stripper.feed(message[i : i + size]) for i in range(0, len(message), size))
    assert out + stripper.finish() == message


def test_a_header_only_message_and_its_last_line() -> None:
    from trio_proxsmtp.protocol.message.strip import HeaderFieldStripper

    stripper = HeaderFieldStripper(b"x-spam-")
    assert stripper.feed(b"A: 1\r\nX-Spam-Flag: YES") + stripper.finish() == b"A: 1\r\n"
