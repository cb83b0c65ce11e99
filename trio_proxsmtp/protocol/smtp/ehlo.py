"""The banner, HELO and EHLO reply rewrites of proxsmtpd (docs/behaviour.md §4.2).

The upstream's host name never reaches the client (it would trip mail-loop detection), and
EHLO keywords for features the proxy cannot relay are removed.
"""

from __future__ import annotations

import attrs

from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = [
    "PROXY_HOSTNAME",
    "STRIPPED_EXTENSIONS",
    "Extensions",
    "advertise",
    "parse_extensions",
    "rewrite_banner",
    "rewrite_ehlo_reply",
    "rewrite_helo_reply",
]

PROXY_HOSTNAME = "smtp.passthru"

# The one place this list lives: extensions the proxy cannot pass through
# (docs/behaviour.md §4.2, B12).
STRIPPED_EXTENSIONS: frozenset[str] = frozenset(
    {"PIPELINING", "STARTTLS", "CHUNKING", "BINARYMIME", "CHECKPOINT", "XCLIENT", "XEXCH50"}
)

# Put in place of a stripped final line, so the client still sees a final "250 " line.
_FILTERED_MARKER = "XFILTERED"


@attrs.frozen
class Extensions:
    """What an upstream EHLO reply advertised."""

    keywords: frozenset[str]
    size_limit: int | None

    def has(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords


def _keyword(text: str) -> str:
    """The upper-cased first word of an EHLO line ("" for an empty line)."""
    words = text.split(None, 1)
    return words[0].upper() if words else ""


def parse_extensions(reply: Reply) -> Extensions:
    """The keywords (and SIZE limit) of an upstream EHLO reply; the first line is the host."""
    keywords: set[str] = set()
    size_limit: int | None = None
    for text in reply.lines[1:]:
        words = text.split()
        if not words:
            continue
        keyword = words[0].upper()
        keywords.add(keyword)
        if keyword == "SIZE" and len(words) > 1 and words[1].isascii() and words[1].isdigit():
            size_limit = int(words[1]) or None
    return Extensions(frozenset(keywords), size_limit)


def rewrite_banner(reply: Reply) -> Reply:
    """A single-line 220 greeting becomes "220 smtp.passthru"; anything else is relayed."""
    if reply.code == 220 and len(reply.lines) == 1:
        return Reply(220, (PROXY_HOSTNAME,))
    return reply


def rewrite_helo_reply(reply: Reply) -> Reply:
    """A positive HELO reply has its host name (first line) replaced."""
    if not reply.is_positive:
        return reply
    return Reply(reply.code, (PROXY_HOSTNAME, *reply.lines[1:]))


def rewrite_ehlo_reply(reply: Reply, strip: frozenset[str] = STRIPPED_EXTENSIONS) -> Reply:
    """A positive EHLO reply: host name replaced, keywords in `strip` removed.

    If the final line was removed, "XFILTERED" takes its place, as in proxsmtpd.
    """
    if not reply.is_positive:
        return reply
    strip = frozenset(word.upper() for word in strip)
    kept = [PROXY_HOSTNAME]
    kept.extend(text for text in reply.lines[1:] if _keyword(text) not in strip)
    if len(reply.lines) > 1 and _keyword(reply.lines[-1]) in strip:
        kept.append(_FILTERED_MARKER)
    return Reply(reply.code, tuple(kept))


def advertise(reply: Reply, line: str) -> Reply:
    """A positive (rewritten) EHLO reply that says `line` (e.g. "SIZE 1000"): a line with
    the same keyword is replaced, or the line is added (before "XFILTERED", which stays last)."""
    if not reply.is_positive:
        return reply
    keyword = _keyword(line)
    lines = [text for text in reply.lines[1:] if _keyword(text) != keyword]
    if lines and lines[-1] == _FILTERED_MARKER:
        lines.insert(-1, line)
    else:
        lines.append(line)
    return Reply(reply.code, (reply.lines[0], *lines))
