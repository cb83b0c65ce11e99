"""Postfix's policy delegation protocol, sans-IO (protocol/policy.py): the request, the
bounded answer reader and what each access(5) action means (docs/behaviour.md §11.9)."""

from __future__ import annotations

import pytest

from trio_proxsmtp.protocol.message.header import HeaderInserter
from trio_proxsmtp.protocol.message.prepend import Prepender, with_prepended
from trio_proxsmtp.protocol.policy import (
    MAX_ANSWER,
    AnswerReader,
    PolicyProtocolError,
    PolicyRequest,
    PolicyVerdictKind,
    encode_request,
    judge,
)


def test_a_request_is_lines_then_an_empty_line_and_a_value_cannot_inject() -> None:
    data = encode_request([("request", "smtpd_access_policy"), ("helo_name", "x\r\nsender=evil")])
    assert data == b"request=smtpd_access_policy\nhelo_name=x??sender=evil\n\n"
    with pytest.raises(ValueError):
        encode_request([("bad name", "x")])


def test_the_request_carries_postfix_names() -> None:
    request = PolicyRequest("r@x", "s@x", "192.0.2.1", "unknown", client_port=4000, size=9)
    attributes = dict(request.attributes())
    assert attributes["request"] == "smtpd_access_policy"
    assert attributes["protocol_state"] == "RCPT"
    assert (attributes["client_port"], attributes["size"]) == ("4000", "9")
    assert attributes["sasl_username"] == ""  # AUTH passes through unread


def test_an_answer_in_pieces() -> None:
    reader = AnswerReader()
    assert reader.feed(b"action=DEFER_IF_PERMIT Greylisted\n") is None
    assert reader.feed(b"\n") == {"action": "DEFER_IF_PERMIT Greylisted"}
    assert reader.feed(b"action=DUNNO\n\n") == {"action": "DUNNO"}  # the next one


@pytest.mark.parametrize(
    "data",
    [
        b"x" * (MAX_ANSWER + 1),
        b"action=" + b"x" * MAX_ANSWER + b"\n\n",
        b"garbage\n\n",
        b"other=1\n\n",
        b"action=DUNNO\n\naction=DUNNO\n\n",
    ],
    ids=["endless", "too-long", "not-name-value", "no-action", "unasked"],
)
def test_a_bad_answer_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(PolicyProtocolError):
        AnswerReader().feed(data)


@pytest.mark.parametrize("action", ["DUNNO", "ok", "OK", "  dunno  "])
def test_relaying_actions(action: str) -> None:
    verdict = judge(action, "r@x")
    assert verdict.kind is PolicyVerdictKind.RELAY and verdict.note is None


@pytest.mark.parametrize(
    ("action", "reply"),
    [
        ("REJECT", "554 5.7.1 <r@x>: Recipient address rejected: Access denied"),
        ("reject 5.1.1 no such user", "554 5.1.1 <r@x>: Recipient address rejected: no such user"),
        ("DEFER", "450 4.7.1 <r@x>: Recipient address rejected: Try again later"),
        (
            "DEFER 5.7.1 wrong class",
            "450 4.7.1 <r@x>: Recipient address rejected: 5.7.1 wrong class",
        ),
        ("DEFER_IF_PERMIT Greylisted", "450 4.7.1 <r@x>: Recipient address rejected: Greylisted"),
        ("451 4.7.1 slow down", "451 4.7.1 <r@x>: Recipient address rejected: slow down"),
        ("550 bad\x01", "550 5.7.1 <r@x>: Recipient address rejected: bad?"),
    ],
)
def test_refusals(action: str, reply: str) -> None:
    verdict = judge(action, "r@x")
    assert verdict.kind is PolicyVerdictKind.REFUSE
    assert verdict.reply is not None and verdict.reply.text == reply


def test_a_long_text_keeps_the_reply_line_within_512_bytes() -> None:
    verdict = judge("REJECT " + "é" * 600, "r" * 300 + "@x")
    assert verdict.reply is not None and len(verdict.reply.to_bytes()) <= 512


@pytest.mark.parametrize(
    "action", ["HOLD", "DISCARD x", "FILTER smtp:x", "REDIRECT a@b", "BCC a@b", "WHATEVER"]
)
def test_what_the_proxy_cannot_do_relays_with_a_note(action: str) -> None:
    verdict = judge(action, "r@x")
    assert verdict.kind is PolicyVerdictKind.RELAY
    assert verdict.note is not None and "DUNNO" in verdict.note


def test_codes_that_are_not_refusals_relay() -> None:
    assert judge("250 fine", "r@x").kind is PolicyVerdictKind.RELAY
    empty = judge("", "r@x")
    assert empty.kind is PolicyVerdictKind.RELAY and empty.note is not None
    tab = judge("REJECT\tno way", "r@x").reply
    assert tab is not None and tab.text.endswith("rejected: no way")
    assert judge("WARN look", "r@x").note == "WARN look"


def test_prepend() -> None:
    verdict = judge("PREPEND X-Greylist: delayed 60 seconds", "r@x")
    assert (verdict.kind, verdict.header) == (
        PolicyVerdictKind.PREPEND,
        "X-Greylist: delayed 60 seconds",
    )
    for bad_header in ("not a header", "X-A: nul\x00inside", "X-A: cr\rinside", ": no name"):
        bad = judge(f"PREPEND {bad_header}", "r@x")
        assert bad.kind is PolicyVerdictKind.RELAY and bad.note is not None
    assert judge("PREPEND X-A:\tvalue", "r@x").header == "X-A:\tvalue"
    assert judge("WARN a\rb", "r@x").note == "WARN a?b"


def test_prepended_headers_go_under_a_received_header_option() -> None:
    message = b"Subject: t\r\n\r\nbody\r\n"
    inserter = with_prepended(["X-A: 1"], HeaderInserter(b"Received: by us"))
    assert isinstance(inserter, Prepender)
    out = inserter.feed(message) + inserter.finish()
    assert out == b"Received: by us\r\nX-A: 1\r\nSubject: t\r\n\r\nbody\r\n"
    empty = with_prepended(["X-A: 1"], None)
    assert empty is not None and empty.finish() == b"X-A: 1\r\n"
    assert with_prepended([], None) is None
