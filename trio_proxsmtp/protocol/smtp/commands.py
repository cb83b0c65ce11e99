"""Client command lines: the verb, and the envelope fields the proxy needs to track.

Parsing is tolerant (it never raises) because every line is forwarded verbatim anyway; the
parse only decides what the proxy does itself and what it records.  MAIL/RCPT follow
RFC 5321 but also accept the sloppy forms proxsmtpd 1.10 accepted, and parameters are split
off an unbracketed address (B18).  XFORWARD is parsed into attribute tokens (B19), and
`xforward_value` turns one into what a filter should see.
"""

from __future__ import annotations

import enum
import re

import attrs

from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = [
    "BAD_CHARACTER",
    "Command",
    "Verb",
    "check_command_line",
    "parse_command",
    "xforward_value",
    "xtext_decode",
    "xtext_encode",
]

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
_WS = " \t"
_WS_RUN = re.compile(r"[ \t]+")
_WS_CHAR = re.compile(r"[ \t]")


class Verb(enum.Enum):
    # Members are singletons compared by identity: hash them so too, in C (Enum's own
    # __hash__ is Python code, and these are dict keys on every input; bench/PROFILE.md).
    __hash__ = object.__hash__

    HELO = "HELO"
    EHLO = "EHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BDAT = "BDAT"
    STARTTLS = "STARTTLS"
    XCLIENT = "XCLIENT"
    XFORWARD = "XFORWARD"
    AUTH = "AUTH"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    OTHER = "OTHER"


_VERBS = {verb.value: verb for verb in Verb if verb is not Verb.OTHER}


@attrs.frozen
class Command:
    """One client command line, parsed; `line` is kept exactly as received."""

    verb: Verb
    line: bytes
    argument: str
    address: str | None = None
    params: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()


# The answer to a command line check_command_line refuses; it is never forwarded.
BAD_CHARACTER = Reply.single(500, "5.5.2 Error: bad character in command")

# C0 controls but TAB, and DEL. Bytes 0x80-0xFF pass: SMTPUTF8 addresses are UTF-8, and
# 1.10 passed any 8-bit byte on.
_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NAMES = {0x00: "NUL", 0x0D: "bare CR", 0x7F: "DEL"}


def check_command_line(line: bytes) -> str | None:
    """Why a client command line must be refused (with BAD_CHARACTER), or None if it may go on.

    ``line`` is one line as LineBuffer returns it, with its terminator (CRLF, or a bare
    LF, which is accepted as 1.10 did). Refused: NUL, a CR anywhere but before the final
    LF (an upstream that splits lines at a bare CR would answer twice and the replies would
    drift out of step), and every other control character but TAB. A line without an LF
    (the peer's last, unterminated bytes) is checked the same way.
    """
    end = len(line)
    if line.endswith(b"\n"):
        end -= 2 if line.endswith(b"\r\n") else 1
    match = _FORBIDDEN.search(line, 0, end)  # no copy of the line without its terminator
    if match is None:
        return None
    byte = line[match.start()]
    name = _NAMES.get(byte, f"control character 0x{byte:02X}")
    return f"{name} at byte {match.start()}"


def parse_command(line: bytes) -> Command:
    """Parse one command line (with its terminator); never raises."""
    text = line.decode(_ENCODING, _ERRORS)
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    text = text.lstrip(_WS)
    end = _find_ws(text, 0)
    verb = _VERBS.get(text[:end].upper(), Verb.OTHER)
    argument = text[end:].strip(_WS)
    if verb is Verb.MAIL:
        address, params = _parse_path(argument, "FROM")
        return Command(verb, line, argument, address, params)
    if verb is Verb.RCPT:
        address, params = _parse_path(argument, "TO")
        return Command(verb, line, argument, address, params)
    if verb is Verb.XFORWARD:
        return Command(verb, line, argument, attributes=_parse_xforward(argument))
    return Command(verb, line, argument)


def _find_ws(text: str, pos: int) -> int:
    """Index of the first space or tab at or after `pos`, or len(text)."""
    match = _WS_CHAR.search(text, pos)
    return len(text) if match is None else match.start()


def _parse_path(argument: str, keyword: str) -> tuple[str | None, tuple[str, ...]]:
    """The mailbox and ESMTP parameters of "FROM:<a> SIZE=1" / "TO: <a>" / "FROM: a SIZE=1"."""
    if argument[: len(keyword)].upper() != keyword:
        return None, ()
    rest = argument[len(keyword) :]
    if rest[:1] not in (" ", "\t", ":", "<"):
        return None, ()  # "FROMX:" or nothing at all after the keyword
    rest = rest.lstrip(" \t:")
    if not rest:
        return None, ()
    if rest.startswith("<"):
        close = _find_unquoted(rest, ">", 1)
        if close < 0:
            return None, ()
        mailbox = rest[1:close]
        address = mailbox if mailbox else "<>"
        return address, _split_ws(rest[close + 1 :])
    end = _find_unquoted(rest, _WS, 0)
    end = len(rest) if end < 0 else end
    return rest[:end], _split_ws(rest[end:])


def _split_ws(text: str) -> tuple[str, ...]:
    """Split on spaces and tabs only (str.split would also split on Unicode spaces)."""
    return tuple(part for part in _WS_RUN.split(text) if part)


def _find_unquoted(text: str, targets: str, pos: int) -> int:
    """Index of the first char in `targets` outside a quoted string, or -1."""
    if text.find('"', pos) < 0:
        # Nothing quoted (the usual address): the first target found is the answer.
        found = [index for target in targets if (index := text.find(target, pos)) >= 0]
        return min(found) if found else -1
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


# A "NAME =" (an attribute name and its equals sign) starting at the current position.
_NAME_EQ = re.compile(r"[^\s=\[]+[ \t]*=")


def _parse_xforward(argument: str) -> tuple[tuple[str, str], ...]:
    """XFORWARD NAME=VALUE tokens in order; spaces around "=" allowed, [..] may hold spaces."""
    attributes: list[tuple[str, str]] = []
    pos, size = 0, len(argument)
    while pos < size:
        while pos < size and argument[pos] in _WS:
            pos += 1
        start = pos
        while pos < size and argument[pos] not in _WS and argument[pos] != "=":
            pos += 1
        name = argument[start:pos]
        while pos < size and argument[pos] in _WS:
            pos += 1
        if pos >= size or argument[pos] != "=":
            if not name:
                pos += 1  # a stray character: skip it and go on
            continue  # a name without a value is not an attribute
        pos += 1
        value_start = pos
        while pos < size and argument[pos] in _WS:
            pos += 1
        if pos < size and argument[pos] == "[":
            close = argument.find("]", pos)
            if close < 0:
                value = argument[pos + 1 :].rstrip(_WS)
                pos = size
            else:
                value = argument[pos + 1 : close]
                pos = close + 1
        elif pos > value_start and _NAME_EQ.match(argument, pos):
            value = ""  # "NAME= ADDR=x": NAME is empty, ADDR is the next attribute
        else:
            end = _find_ws(argument, pos)
            value, pos = argument[pos:end], end
        if name:
            attributes.append((name.upper(), value))
    return tuple(attributes)


# -- xtext (RFC 3461, formerly 1891): XCLIENT and XFORWARD attribute values ---------------

_XTEXT_ESCAPE = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_encode(value: str) -> str:
    """Outside "!".."~", and "+" and "=", every UTF-8 byte becomes "+XX"."""
    out: list[str] = []
    for char in value:
        code = ord(char)
        if code < 33 or code > 126 or char in "+=":
            out.extend(f"+{byte:02X}" for byte in char.encode(_ENCODING, _ERRORS))
        else:
            out.append(char)
    return "".join(out)


def xtext_decode(value: str) -> str:
    """Each "+XX" becomes the byte XX; anything else is kept as it is."""
    if "+" not in value:
        return value
    raw = _XTEXT_ESCAPE.sub(
        lambda m: bytes([int(m.group(1), 16)]).decode("latin-1"),
        value.encode(_ENCODING, _ERRORS).decode("latin-1"),
    )
    return raw.encode("latin-1").decode(_ENCODING, _ERRORS)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Postfix sends these (in brackets, which the parser strips) when it does not know the value.
_UNKNOWN = frozenset({"UNAVAILABLE", "TEMPUNAVAIL"})


def xforward_value(value: str) -> str | None:
    """An XFORWARD attribute value as a filter should see it; None when the sender does not know it.

    Postfix xtext-encodes the values (RFC 3461: "+XX" is the byte XX, e.g. "+20" a space)
    and sends "[UNAVAILABLE]" / "[TEMPUNAVAIL]" for what it does not know; 1.10 passed
    both on raw.  A decoded control character (NUL cannot even go into an environment
    variable) becomes "?".
    """
    if value in _UNKNOWN:
        return None
    return _CONTROL.sub("?", xtext_decode(value))
