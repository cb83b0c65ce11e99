"""Attack 7 (the pure part): NUL, bare CR and other control bytes in a command line.

`RCPT TO:<b@x>\\rNOOP\\r\\n` went upstream as one line; an upstream that splits at a bare
CR answered twice, the stale 250 was taken as DATA's answer and the message was lost.
check_command_line says which lines the session must refuse (BAD_CHARACTER, never
forwarded); the session calls it for every client command line (phase 2 of issue 16).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.smtp.commands import BAD_CHARACTER, check_command_line

ALLOWED_CONTROL = {0x09}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"RCPT TO:<b@x>\rNOOP\r\n", "bare CR at byte 13"),
        (b"RCPT TO:<a\x00b@x>\r\n", "NUL at byte 10"),
        (b"MAIL FROM:<a@x>\r\r\n", "bare CR at byte 15"),
        (b"\rQUIT\n", "bare CR at byte 0"),
        (b"HELO a\x1bb\r\n", "control character 0x1B at byte 6"),
        (b"NOOP \x7f\r\n", "DEL at byte 5"),
        (b"NOOP \x0c\r\n", "control character 0x0C at byte 5"),
        (b"RCPT TO:<b@x>\r", "bare CR at byte 13"),  # unterminated: the CR is bare
    ],
)
def test_refused(line: bytes, reason: str) -> None:
    assert check_command_line(line) == reason


@pytest.mark.parametrize(
    "line",
    [
        b"RCPT TO:<b@x>\r\n",
        b"RCPT TO:<b@x>\n",  # a bare LF line end is accepted, as 1.10 did
        b"MAIL FROM:<\xc3\xa9l\xc3\xa8ve@\xc3\xa9cole.fr> SMTPUTF8\r\n",  # UTF-8 address
        b"HELO \xff\xfe\r\n",  # 8-bit bytes pass, as in 1.10
        b"XFORWARD HELO=a\tb\r\n",  # TAB is whitespace in SMTP
        b"\r\n",
        b"\n",
        b"",
        b"QUIT",
    ],
)
def test_accepted(line: bytes) -> None:
    assert check_command_line(line) is None


def test_the_reply() -> None:
    assert BAD_CHARACTER.to_bytes() == b"500 5.5.2 Error: bad character in command\r\n"


@given(st.binary(max_size=80), st.sampled_from([b"\r\n", b"\n", b""]))
def test_refused_exactly_when_a_forbidden_byte_is_in_the_body(body: bytes, end: bytes) -> None:
    line = body + end
    text = line.removesuffix(b"\r\n") if line.endswith(b"\r\n") else line.removesuffix(b"\n")
    forbidden = [b for b in text if (b < 0x20 and b not in ALLOWED_CONTROL) or b == 0x7F]
    assert (check_command_line(line) is None) == (not forbidden)
