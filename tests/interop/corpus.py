"""A corpus of real-world messages no one here wrote, plus constructed edge cases.

- CPython's email test data (Debian package libpython3.11-testsuite, ``test/test_email/data``);
- SpamAssassin's sample spam and ham (package spamassassin, ``examples/sample-*.txt``);
- messages built here for what the others lack: long lines, bare LF, an 8-bit body, no
  final newline, a huge header block, nested MIME, dot lines, NUL bytes.

What "byte for byte" means through SMTP (docs/behaviour.md §11.15): a message is a
sequence of CRLF-terminated lines (RFC 5321 §2.3.8), so a file becomes the message
``canonical(file)``: every line end (LF, CR or CRLF) is CRLF, and a last line without one
gets one (SMTP's final ``CRLF.CRLF`` supplies it). Dot-stuffing is the transfer's business,
undone at each hop. The next server must get ``canonical(file)`` with the proxy's Header
line inserted where its header section ends (before the first blank line or line that is
not a header field, after the last line if there is none: §7.2), and nothing else
changed; a client that sends bare LFs gets the same result (§5.1).
"""

from __future__ import annotations

import re
import sysconfig
from email.message import EmailMessage
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

CPYTHON_DATA = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
SPAMASSASSIN = Path("/usr/share/doc/spamassassin/examples")


def canonical(raw: bytes) -> bytes:
    """The message SMTP carries for these bytes (see the module docstring)."""
    text = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    return text if text.endswith(b"\r\n") or not text else text + b"\r\n"


FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")


def header_end(lines: list[bytes]) -> int:
    """Where the header section of these lines ends (docs/behaviour.md §7.2): the first
    blank (or whitespace-only) line, or line that is neither a field nor the continuation
    of one; ``len(lines)`` if none."""
    for index, line in enumerate(lines):
        folded = index > 0 and line[:1] in (b" ", b"\t")
        if not line.strip() or not (FIELD.match(line) or folded):
            return index
    return len(lines)


def with_header(message: bytes, header: bytes) -> bytes:
    """``message`` (canonical) with ``header`` (no line end) where its header ends."""
    lines = message.split(b"\r\n")[:-1]
    lines.insert(header_end(lines), header)
    return b"".join(line + b"\r\n" for line in lines)


def real_world() -> dict[str, bytes]:
    """Name → bytes of every message file found (empty if the packages are missing)."""
    found = {}
    for path in sorted(CPYTHON_DATA.glob("msg_*.txt")):
        found[f"cpython/{path.name}"] = path.read_bytes()
    for path in sorted(SPAMASSASSIN.glob("sample-*.txt")):
        found[f"spamassassin/{path.name}"] = path.read_bytes()
    return found


def _nested_mime() -> bytes:
    inner = MIMEMultipart("alternative")
    inner.attach(MIMEText("plain text part\n", "plain", "utf-8"))
    inner.attach(MIMEText("<p>html part — ünïcode</p>\n", "html", "utf-8"))
    forwarded = EmailMessage()
    forwarded["From"] = "inner@example.test"
    forwarded["Subject"] = "forwarded"
    forwarded.set_content("the forwarded body\n.a dot line\n")
    forwarded.add_attachment(b"\x00\x01binary\xff" * 20, "application", "octet-stream")
    outer = MIMEMultipart("mixed")
    outer["From"] = "outer@example.test"
    outer["To"] = "r@example.test"
    outer["Subject"] = "nested MIME"
    outer.attach(inner)
    outer.attach(MIMEMessage(forwarded))
    outer.attach(MIMEApplication(bytes(range(256)) * 4))
    return outer.as_bytes()


def constructed() -> dict[str, bytes]:
    head = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: edge\r\n"
    folded = b"X-Folded: start" + b"".join(b"\r\n\tfold %d" % i for i in range(2000)) + b"\r\n"
    many = b"".join(b"X-Many-%d: value %d\r\n" % (i, i) for i in range(1000))
    return {
        "long-lines": head + b"\r\n" + b"a" * 998 + b"\r\n" + b"b" * 5000 + b"\r\nend\r\n",
        "bare-lf": head.replace(b"\r\n", b"\n") + b"\nline one\nline two\n\nlast\n",
        "bare-cr": head + b"\r\nold\rmac\rline ends\r\n",
        "8bit-body": head + b"\r\n" + "café ünïcode 日本語\r\n".encode() + b"\xe9\xff\x80\r\n",
        "no-final-newline": head + b"\r\nthe last line has no end",
        "huge-headers": head + folded + many + b"\r\nbody after a huge header block\r\n",
        "nested-mime": _nested_mime(),
        "dot-lines": head + b"\r\n.\r\n..\r\n.hidden\r\n. \r\nend\r\n",
        "no-blank-line": head + b"X-Last: header only",
        "whitespace-line-in-headers": head + b" \t\r\nbody after a whitespace-only line\r\n",
        "nul-bytes": head + b"\r\nnul \x00 inside\r\n",
        "empty-body": head + b"\r\n",
    }
