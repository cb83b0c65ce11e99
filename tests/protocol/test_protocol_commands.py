"""Command parsing: verbs, MAIL/RCPT paths and parameters (B18), XFORWARD attributes (B19)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.smtp.commands import (
    Command,
    Verb,
    parse_command,
    xforward_value,
    xtext_decode,
    xtext_encode,
)


@pytest.mark.parametrize(
    ("line", "verb"),
    [
        (b"HELO c\r\n", Verb.HELO),
        (b"ehlo c\r\n", Verb.EHLO),
        (b"  \tEhLo c\r\n", Verb.EHLO),
        (b"DATA\r\n", Verb.DATA),
        (b"data\n", Verb.DATA),
        (b"DATA \r\n", Verb.DATA),
        (b"DATA", Verb.DATA),
        (b"DATAX\r\n", Verb.OTHER),
        (b"DATA:\r\n", Verb.OTHER),
        (b"BDAT 10 LAST\r\n", Verb.BDAT),
        (b"STARTTLS\r\n", Verb.STARTTLS),
        (b"STARTTLSX\r\n", Verb.OTHER),
        (b"XCLIENT ADDR=6.6.6.6\r\n", Verb.XCLIENT),
        (b"XFORWARD ADDR=1.2.3.4\r\n", Verb.XFORWARD),
        (b"AUTH PLAIN AGFAAGI=\r\n", Verb.AUTH),
        (b"RSET\r\n", Verb.RSET),
        (b"NOOP\r\n", Verb.NOOP),
        (b"QUIT\r\n", Verb.QUIT),
        (b"MAIL FROM:<a>\r\n", Verb.MAIL),
        (b"RCPT TO:<a>\r\n", Verb.RCPT),
        (b"VRFY x\r\n", Verb.OTHER),
        (b"\r\n", Verb.OTHER),
        (b"", Verb.OTHER),
        (b"\xff\xfe garbage\r\n", Verb.OTHER),
    ],
)
def test_verbs(line: bytes, verb: Verb) -> None:
    command = parse_command(line)
    assert command.verb is verb
    assert command.line == line


def test_argument_is_stripped_text_after_verb() -> None:
    assert parse_command(b"EHLO  client.example \t\r\n").argument == "client.example"
    assert parse_command(b"NOOP\r\n").argument == ""
    assert parse_command(b"AUTH PLAIN x\r\n").address is None


def test_line_is_kept_verbatim_including_8bit() -> None:
    line = b"HELO caf\xc3\xa9\xff\n"
    command = parse_command(line)
    assert command.line == line
    assert command.argument.encode("utf-8", "surrogateescape") == b"caf\xc3\xa9\xff"


@pytest.mark.parametrize(
    ("line", "address", "params"),
    [
        (b"MAIL FROM:<a@x>\r\n", "a@x", ()),
        (b"MAIL  FROM:<a@x>\r\n", "a@x", ()),  # two spaces: recognised now (B18)
        (b"mail from: <a@x> SIZE=10\r\n", "a@x", ("SIZE=10",)),
        (b"MAIL FROM <a@x>\r\n", "a@x", ()),
        (b"MAIL FROM:\t<a@x>\tSIZE=10  BODY=8BITMIME\r\n", "a@x", ("SIZE=10", "BODY=8BITMIME")),
        (b"MAIL FROM:<>\r\n", "<>", ()),
        (b"MAIL FROM:<> SIZE=0\r\n", "<>", ("SIZE=0",)),
        (b"MAIL FROM: p@x SIZE=10\r\n", "p@x", ("SIZE=10",)),  # B18: params split off
        (b"MAIL FROM:p@x\r\n", "p@x", ()),
        (b'MAIL FROM:<"a b"@x>\r\n', '"a b"@x', ()),
        (b'MAIL FROM:<"a>b"@x> SIZE=1\r\n', '"a>b"@x', ("SIZE=1",)),
        (b'MAIL FROM:"a b"@x SIZE=1\r\n', '"a b"@x', ("SIZE=1",)),
        (b"MAIL FROM:<@r.example:a@x>\r\n", "@r.example:a@x", ()),
        (b"MAIL FROM<a@x>\r\n", "a@x", ()),
        (b"MAIL xyz\r\n", None, ()),
        (b"MAIL\r\n", None, ()),
        (b"MAIL FROM:\r\n", None, ()),
        (b"MAIL FROMX:<a@x>\r\n", None, ()),
        (b"MAIL FROM:<a@x\r\n", None, ()),
        (b"MAIL TO:<a@x>\r\n", None, ()),
        (b"RCPT TO:<r@x>\r\n", "r@x", ()),
        (b"RCPT TO:<a@x> NOTIFY=NEVER\r\n", "a@x", ("NOTIFY=NEVER",)),
        (b"RCPT TO: <b@x> NOTIFY=NEVER\n", "b@x", ("NOTIFY=NEVER",)),
        (b"rcpt to:<Postmaster>\r\n", "Postmaster", ()),
        (b"RCPT FROM:<a@x>\r\n", None, ()),
    ],
)
def test_mail_and_rcpt_paths(line: bytes, address: str | None, params: tuple[str, ...]) -> None:
    command = parse_command(line)
    assert (command.address, command.params) == (address, params)
    assert command.attributes == ()


def test_params_split_on_space_and_tab_only() -> None:
    # U+00A0 (no-break space) is not SMTP whitespace and stays inside the parameter.
    command = parse_command("MAIL FROM:<a@x> X=a\u00a0b\r\n".encode())
    assert command.params == ("X=a\u00a0b",)


@pytest.mark.parametrize(
    ("line", "attributes"),
    [
        (
            b"XFORWARD HELO = [weird helo] ADDR=[IPv6:2001:db8::1]\r\n",
            (("HELO", "weird helo"), ("ADDR", "IPv6:2001:db8::1")),
        ),
        (
            b"XFORWARD NAME=addr.example ADDR=1.2.3.4\r\n",  # B19: ADDR is not hidden by NAME=addr
            (("NAME", "addr.example"), ("ADDR", "1.2.3.4")),
        ),
        (
            b"XFORWARD NAME=x ADDR=y PROTO=ESMTP HELO=z\r\n",
            (("NAME", "x"), ("ADDR", "y"), ("PROTO", "ESMTP"), ("HELO", "z")),
        ),
        (b"xforward addr=[1.2.3.4]\r\n", (("ADDR", "1.2.3.4"),)),
        (b"XFORWARD NAME= ADDR=1.2.3.4\r\n", (("NAME", ""), ("ADDR", "1.2.3.4"))),
        (b"XFORWARD NAME=\r\n", (("NAME", ""),)),
        (b"XFORWARD HELO=[unclosed value\r\n", (("HELO", "unclosed value"),)),
        (b"XFORWARD junk ADDR=1.2.3.4 =x\r\n", (("ADDR", "1.2.3.4"),)),
        (b"XFORWARD\r\n", ()),
    ],
)
def test_xforward_attributes(line: bytes, attributes: tuple[tuple[str, str], ...]) -> None:
    command = parse_command(line)
    assert command.verb is Verb.XFORWARD
    assert command.attributes == attributes


@given(st.binary(max_size=200))
def test_never_raises_and_keeps_the_line(line: bytes) -> None:
    command = parse_command(line)
    assert isinstance(command, Command)
    assert command.line == line


@given(
    st.sampled_from([b"MAIL FROM:", b"RCPT TO:", b"XFORWARD ", b"mail from ", b"rcpt to: "]),
    st.binary(max_size=100),
)
def test_envelope_commands_never_raise(prefix: bytes, rest: bytes) -> None:
    command = parse_command(prefix + rest + b"\r\n")
    assert command.verb in (Verb.MAIL, Verb.RCPT, Verb.XFORWARD)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("IPv6:2001:db8::1", "IPv6:2001:db8::1"),
        ("odd+20helo", "odd helo"),
        ("a+2Bb+3Dc", "a+b=c"),  # "+" and "=" are always escaped by the sender
        ("caf+C3+A9", "café"),  # UTF-8 octets
        ("a+2", "a+2"),  # not an escape: kept as it is
        ("x+00y+0Az", "x?y?z"),  # control characters (NUL cannot go into the environment)
        ("UNAVAILABLE", None),  # "[UNAVAILABLE]" with its brackets stripped by the parser
        ("TEMPUNAVAIL", None),
    ],
)
def test_xforward_value(value: str, expected: str | None) -> None:
    assert xforward_value(value) == expected


@given(st.text())
def test_xforward_value_never_yields_a_control_character(value: str) -> None:
    decoded = xforward_value(value)
    assert decoded is None or not any(ord(c) < 32 or ord(c) == 127 for c in decoded)


@given(st.text())
def test_xtext_decode_undoes_encode(value: str) -> None:
    encoded = xtext_encode(value)
    assert all(33 <= ord(c) <= 126 for c in encoded) and "=" not in encoded
    assert xtext_decode(encoded) == value


# -- the fast scans give the same answers as the character loops they replaced ----------


def _find_ws_loop(text: str, pos: int) -> int:
    for index in range(pos, len(text)):
        if text[index] in " \t":
            return index
    return len(text)


def _find_unquoted_loop(text: str, targets: str, pos: int) -> int:
    quoted = False
    index = pos
    while index < len(text):
        char = text[index]
        if quoted and char == "\\":
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and char in targets:
            return index
        index += 1
    return -1


_PATH_TEXT = st.text(alphabet=st.sampled_from(' \t"\\<>:=@ab\u00e9'), max_size=40)


@given(_PATH_TEXT, st.integers(min_value=0, max_value=45), st.sampled_from([">", " \t"]))
def test_scans_match_the_character_loops(text: str, pos: int, targets: str) -> None:
    from trio_proxsmtp.protocol.smtp import commands

    assert commands._find_ws(text, pos) == _find_ws_loop(text, pos)
    assert commands._find_unquoted(text, targets, pos) == _find_unquoted_loop(text, targets, pos)


@given(
    st.sampled_from(["MAIL FROM:", "RCPT TO:", "mail from: ", "RCPT  TO:<", "HELO "]), _PATH_TEXT
)
def test_parse_command_any_path_text(prefix: str, rest: str) -> None:
    """Paths with and without quotes parse as the loop-based scanner parsed them."""
    from trio_proxsmtp.protocol.smtp import commands

    line = (prefix + rest + "\r\n").encode("utf-8")
    command = parse_command(line)
    argument = command.argument
    if command.verb in (Verb.MAIL, Verb.RCPT):
        keyword = "FROM" if command.verb is Verb.MAIL else "TO"
        original = commands._find_unquoted
        try:
            commands._find_unquoted = _find_unquoted_loop  # type: ignore[assignment]
            expected = commands._parse_path(argument, keyword)
        finally:
            commands._find_unquoted = original
        assert (command.address, command.params) == expected
