"""The corpus of the differential test: scripted sessions run through proxsmtpd 1.10 and us.

Each :class:`Case` is one connection.  Its ``steps`` are sent one at a time, byte-exact,
and after each one exactly one reply is read (lock-step: 1.10 breaks on pipelining, B1).
``config`` is proxsmtpd.conf text; ``{tmp}`` in it becomes a scratch directory that both
proxies share as TempDirectory (so TMPDIR is the same).  ``upstream`` holds keyword
arguments for the FakeUpstream (a fresh one per run).  Adding a case is adding an entry.

Sessions that 1.10 handles differently on purpose (spec §15) are not here: each has its
own test in test_integration_differential.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


def line(text: str | bytes) -> bytes:
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return raw + b"\r\n"


def data(body: bytes) -> bytes:
    """A message as sent after 354: already dot-stuffed by the caller, CRLF "." CRLF."""
    return body + b".\r\n"


EHLO = line("EHLO client.example")
HELO = line("HELO client.example")
MAIL = line("MAIL FROM:<s@x>")
RCPT = line("RCPT TO:<r@x>")
DATA = line("DATA")
QUIT = line("QUIT")
RSET = line("RSET")
BODY = b"Subject: t\r\n\r\nbody\r\n"


def transaction(
    body: bytes = BODY, *, mail: bytes = MAIL, rcpts: tuple[bytes, ...] = (RCPT,)
) -> tuple[bytes, ...]:
    return (mail, *rcpts, DATA, data(body))


STANDARD = (EHLO, *transaction(), QUIT)

ENV_DUMP = (
    "FilterCommand: cat; printf 'X-Env: SENDER=%s|RECIPIENTS=%s|CLIENT=%s|SERVER=%s"
    '|REMOTE=%s|REMOTE_HELO=%s|EMAIL=%s|TMPDIR=%s\\r\\n\' "${SENDER-unset}" '
    '"$(printf %s "${RECIPIENTS-unset}" | tr \'\\n\' ,)" "$CLIENT" "$SERVER" "${REMOTE-unset}" '
    '"${REMOTE_HELO-unset}" "${EMAIL-unset}" "$TMPDIR"'
)


@attrs.frozen
class Case:
    name: str
    steps: tuple[bytes, ...] = STANDARD
    config: str = "FilterCommand: cat"
    upstream: Mapping[str, Any] = attrs.field(factory=dict)


CASES: tuple[Case, ...] = (
    # -- command phase -------------------------------------------------------------------
    Case("plain relay, no filter", config=""),
    Case("cat filter, standard transaction"),
    Case("HELO instead of EHLO", steps=(HELO, *transaction(), QUIT)),
    Case("EHLO rewrite and extension stripping", steps=(EHLO, QUIT)),
    Case("EHLO single-line reply", steps=(EHLO, QUIT), upstream={"ehlo_keywords": ()}),
    Case("multi-line banner relayed", steps=(EHLO, QUIT), upstream={"banner": "220-a\n220 b"}),
    Case(
        "554 banner relayed, session goes on",
        steps=(HELO, QUIT),
        upstream={"banner": "554 go away"},
    ),
    Case("STARTTLS refused locally", steps=(EHLO, line("STARTTLS"), QUIT)),
    Case("client XCLIENT refused", steps=(EHLO, line("XCLIENT ADDR=6.6.6.6"), QUIT)),
    Case(
        "other commands forwarded",
        steps=(
            EHLO,
            line("NOOP"),
            line("VRFY r@x"),
            line("HELP"),
            line("FOO bar"),
            line("DATAX"),
            QUIT,
        ),
    ),
    Case(
        "lower-case commands",
        steps=(
            line("ehlo client.example"),
            line("mail from:<s@x>"),
            line("rcpt to:<r@x>"),
            line("data"),
            data(BODY),
            line("quit"),
        ),
    ),
    Case(
        "MAIL parameters",
        steps=(EHLO, *transaction(mail=line("MAIL FROM:<s@x> SIZE=100 BODY=8BITMIME")), QUIT),
    ),
    Case("session without QUIT", steps=(EHLO, *transaction())),
    # -- filters ------------------------------------------------------------------------
    Case(
        "filter rewrites the subject", config="FilterCommand: sed 's/^Subject: /Subject: [tag] /'"
    ),
    Case(
        "filter replaces the message without reading it",
        config="FilterCommand: printf 'Subject: replaced\\r\\n\\r\\nnew body\\r\\n'",
    ),
    Case(
        "filter rejects with a code",
        config="FilterCommand: cat >/dev/null; echo '550 Bad Email' >&2; exit 1",
    ),
    Case(
        "filter rejects without a code",
        config="FilterCommand: cat >/dev/null; echo 'Virus found' >&2; exit 1",
    ),
    Case("filter rejects with no stderr", config="FilterCommand: cat >/dev/null; exit 2"),
    Case(
        "filter temporary failure",
        config="FilterCommand: cat >/dev/null; echo '451 4.7.1 Try later' >&2; exit 1",
    ),
    Case(
        "silent drop",
        config="FilterCommand: cat >/dev/null; echo '250 Dropped silently' >&2; exit 1",
    ),
    Case("stderr ignored on exit 0", config="FilterCommand: cat; echo '550 x' >&2; exit 0"),
    Case(
        "last non-blank stderr line",
        config="FilterCommand: cat >/dev/null; "
        "printf 'first line\\n  second line  \\n\\n   \\n' >&2; exit 3",
    ),
    Case("filter killed by a signal", config="FilterCommand: cat >/dev/null; kill -9 $$"),
    Case(
        "file mode filter edits the spool",
        config="FilterType: file\nFilterCommand: sed -i 's/^body$/edited/' \"$EMAIL\"",
    ),
    Case(
        "rejection then a delivered message",
        # The delivered message is passed on: exit 0 with no output is a 451 (a difference).
        config="FilterCommand: m=$(cat); case \"$m\" in *bad*) echo '550 no' >&2; exit 1;; esac; "
        "printf '%s\\n' \"$m\"",
        steps=(EHLO, *transaction(b"Subject: bad\r\n\r\nx\r\n"), *transaction(), QUIT),
    ),
    # -- environment --------------------------------------------------------------------
    Case("environment of the filter", config=ENV_DUMP + "\nTempDirectory: {tmp}"),
    Case(
        "null sender in SENDER",
        config=ENV_DUMP + "\nTempDirectory: {tmp}",
        steps=(EHLO, *transaction(mail=line("MAIL FROM:<>")), QUIT),
    ),
    Case(
        "rejected recipient not in RECIPIENTS",
        config=ENV_DUMP + "\nTempDirectory: {tmp}",
        steps=(
            EHLO,
            *transaction(
                rcpts=(
                    line("RCPT TO:<a@x>"),
                    line("RCPT TO:<reject@x>"),
                    line("RCPT TO: <b@x> NOTIFY=NEVER"),
                )
            ),
            QUIT,
        ),
    ),
    Case(
        "XFORWARD sets REMOTE and REMOTE_HELO",
        config=ENV_DUMP + "\nTempDirectory: {tmp}",
        steps=(
            EHLO,
            line("XFORWARD HELO=h.example ADDR=192.0.2.7 PROTO=ESMTP"),
            *transaction(),
            QUIT,
        ),
    ),
    Case(
        "RSET clears the envelope",
        config=ENV_DUMP + "\nTempDirectory: {tmp}",
        steps=(
            EHLO,
            line("MAIL FROM:<a@x>"),
            line("RCPT TO:<one@x>"),
            RSET,
            *transaction(mail=line("MAIL FROM:<b@x>"), rcpts=(line("RCPT TO:<two@x>"),)),
            QUIT,
        ),
    ),
    Case(
        "two messages in one session",
        config=ENV_DUMP + "\nTempDirectory: {tmp}",
        steps=(
            EHLO,
            *transaction(),
            *transaction(b"Subject: second\r\n\r\nmore\r\n", mail=line("MAIL FROM:<c@x>")),
            QUIT,
        ),
    ),
    # -- message bytes ------------------------------------------------------------------
    Case(
        "dot lines pass through cat",
        steps=(EHLO, *transaction(b"Subject: t\r\n\r\n..hidden\r\n..\r\n...\r\nend\r\n"), QUIT),
    ),
    Case(
        "dot lines without a filter",
        config="",
        steps=(EHLO, *transaction(b"Subject: t\r\n\r\n..hidden\r\n..\r\nend\r\n"), QUIT),
    ),
    Case(
        "8-bit and NUL bytes",
        steps=(EHLO, *transaction(b"Subject: \xe9t\xe9\r\n\r\nab\x00cd\xff\r\n\xc3\xa4\r\n"), QUIT),
    ),
    Case(
        "a 5000-byte data line",
        steps=(EHLO, *transaction(b"Subject: t\r\n\r\n" + b"x" * 5000 + b"\r\n"), QUIT),
    ),
    Case(
        "a reply line with empty text keeps its space",
        steps=(EHLO, line("NOOP"), QUIT),
        upstream={"replies": {"EHLO": "250-upstream.example\n250-DSN\n250 ", "NOOP": "250 "}},
    ),
    Case(
        "many recipients",
        steps=(EHLO, *transaction(rcpts=tuple(line(f"RCPT TO:<r{i}@x>") for i in range(20))), QUIT),
    ),
    # -- upstream rejections ------------------------------------------------------------
    Case(
        "upstream rejects MAIL",
        steps=(EHLO, line("MAIL FROM:<reject@x>"), MAIL, RCPT, DATA, data(BODY), QUIT),
    ),
    Case(
        "upstream rejects one RCPT",
        steps=(EHLO, *transaction(rcpts=(line("RCPT TO:<reject@x>"), RCPT)), QUIT),
    ),
    Case(
        "upstream 451 to RCPT",
        steps=(EHLO, MAIL, RCPT, QUIT),
        upstream={"replies": {"RCPT": "451 4.3.0 try later"}},
    ),
    Case("upstream rejects the message", upstream={"replies": {".": "550 5.7.1 spam"}}),
    Case("upstream defers the message", upstream={"replies": {".": "452 4.3.1 full"}}),
    # -- header -------------------------------------------------------------------------
    Case(
        "header before the first blank line",
        config="Header: X-F: %i %l",
        steps=(EHLO, *transaction(b"Subject: t\r\nX-2: y\r\n\r\nbody\r\n\r\nmore\r\n"), QUIT),
    ),
    Case("Received header prepended", config="FilterCommand: cat\nHeader: Received: from %i"),
    Case(
        "header escapes",
        config="FilterCommand: cat\nHeader: X-A: one\\r\\nX-B: two\\tT \\\\ \\q %%",
    ),
    # -- authenticated sessions skip the filter -------------------------------------------
    Case(
        "Skip: authenticated relays the upstream's 354, no filter, no header",
        config="Skip: authenticated\nHeader: X-H: y\nFilterCommand: echo '550 no' >&2; exit 1",
        steps=(EHLO, line("AUTH PLAIN AHNAeA=="), *transaction(), QUIT),
    ),
    # -- reject mode --------------------------------------------------------------------
    Case("reject mode", config="FilterType: reject", steps=(EHLO, MAIL, RCPT, DATA, QUIT)),
    Case(
        "reject mode with FilterReject",
        config="FilterType: reject\nFilterReject: Go away",
        steps=(EHLO, MAIL, QUIT),
    ),
)
