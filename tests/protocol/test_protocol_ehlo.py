"""The banner/HELO/EHLO rewrites, checked against spec §7.2, §7.4 and tests T01-T06."""

from __future__ import annotations

import pytest

from trio_proxsmtp.protocol.smtp.ehlo import (
    PROXY_HOSTNAME,
    STRIPPED_EXTENSIONS,
    parse_extensions,
    rewrite_banner,
    rewrite_ehlo_reply,
    rewrite_helo_reply,
)
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.protocol.smtp.reply_parser import ReplyParser

# The fake upstream's EHLO reply of spec §17.
UPSTREAM_EHLO = (
    b"250-upstream.example\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10240000\r\n"
    b"250-STARTTLS\r\n"
    b"250-AUTH PLAIN LOGIN\r\n"
    b"250-XCLIENT NAME ADDR PROTO HELO\r\n"
    b"250-XFORWARD NAME ADDR PROTO HELO\r\n"
    b"250-8BITMIME\r\n"
    b"250-BINARYMIME\r\n"
    b"250-XEXCH50\r\n"
    b"250-CHECKPOINT\r\n"
    b"250-DSN\r\n"
    b"250 CHUNKING\r\n"
)


def parse(wire: bytes) -> Reply:
    parser = ReplyParser()
    parser.feed(wire)
    reply = parser.next_reply()
    assert reply is not None
    return reply


def test_t01_single_line_banner_is_replaced() -> None:
    assert rewrite_banner(parse(b"220 upstream.example ESMTP\r\n")).to_bytes() == (
        b"220 smtp.passthru\r\n"
    )
    assert rewrite_banner(parse(b"220\r\n")).to_bytes() == b"220 smtp.passthru\r\n"


@pytest.mark.parametrize("wire", [b"220-a\r\n220 b\r\n", b"554 go away\r\n", b"421 busy\r\n"])
def test_t02_t03_other_banners_pass_unchanged(wire: bytes) -> None:
    assert rewrite_banner(parse(wire)).to_bytes() == wire


def test_t04_ehlo_rewrite_exact() -> None:
    assert rewrite_ehlo_reply(parse(UPSTREAM_EHLO)).to_bytes() == (
        b"250-smtp.passthru\r\n"
        b"250-SIZE 10240000\r\n"
        b"250-AUTH PLAIN LOGIN\r\n"
        b"250-XFORWARD NAME ADDR PROTO HELO\r\n"
        b"250-8BITMIME\r\n"
        b"250-DSN\r\n"
        b"250 XFILTERED\r\n"
    )


def test_t05_single_line_ehlo_reply() -> None:
    assert rewrite_ehlo_reply(parse(b"250 up\r\n")).to_bytes() == b"250 smtp.passthru\r\n"


def test_kept_final_line_needs_no_marker() -> None:
    reply = parse(b"250-up\r\n250-PIPELINING\r\n250 SIZE 10\r\n")
    assert rewrite_ehlo_reply(reply) == Reply(250, (PROXY_HOSTNAME, "SIZE 10"))


def test_whole_word_case_insensitive_matching() -> None:
    reply = parse(b"250-up\r\n250-STARTTLSX\r\n250-starttls\r\n250 CHUNKING extra\r\n")
    assert rewrite_ehlo_reply(reply) == Reply(250, (PROXY_HOSTNAME, "STARTTLSX", "XFILTERED"))


def test_custom_strip_set() -> None:
    reply = parse(b"250-up\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n")
    assert rewrite_ehlo_reply(reply, frozenset({"auth"})) == Reply(
        250, (PROXY_HOSTNAME, "PIPELINING", "XFILTERED")
    )


def test_stripped_list_is_the_reference_list() -> None:
    assert (
        frozenset(
            {"PIPELINING", "STARTTLS", "CHUNKING", "BINARYMIME", "CHECKPOINT", "XCLIENT", "XEXCH50"}
        )
        == STRIPPED_EXTENSIONS
    )


@pytest.mark.parametrize("wire", [b"550 no\r\n", b"421-a\r\n421 b\r\n", b"502 not here\r\n"])
def test_non_2xx_ehlo_and_helo_replies_pass_unchanged(wire: bytes) -> None:
    assert rewrite_ehlo_reply(parse(wire)).to_bytes() == wire
    assert rewrite_helo_reply(parse(wire)).to_bytes() == wire


def test_t06_helo_reply() -> None:
    assert rewrite_helo_reply(parse(b"250 upstream.example\r\n")).to_bytes() == (
        b"250 smtp.passthru\r\n"
    )
    assert rewrite_helo_reply(parse(b"250-upstream.example\r\n250 hi\r\n")).to_bytes() == (
        b"250-smtp.passthru\r\n250 hi\r\n"
    )


def test_parse_extensions() -> None:
    extensions = parse_extensions(parse(UPSTREAM_EHLO))
    assert extensions.has("xclient")
    assert extensions.has("CHUNKING")
    assert not extensions.has("upstream.example")  # the first line is the host, not a keyword
    assert not extensions.has("SMTPUTF8")
    assert extensions.size_limit == 10240000
    assert "AUTH" in extensions.keywords


@pytest.mark.parametrize(
    ("line", "limit"),
    [
        (b"250 SIZE\r\n", None),
        (b"250 SIZE 0\r\n", None),
        (b"250 size 5\r\n", 5),
        (b"250 SIZE x\r\n", None),
    ],
)
def test_size_limit(line: bytes, limit: int | None) -> None:
    assert parse_extensions(parse(b"250-up\r\n" + line)).size_limit == limit
