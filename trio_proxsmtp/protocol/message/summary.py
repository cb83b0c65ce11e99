"""The per-message summary log line: one line per message, Postfix-like, greppable.

Pure: no I/O, no clock. The session collects the facts and the times, this module only
decides how they read. The fields come in a fixed order; the first ones are those of the
first release, so existing greps (``client=``, ``status=REJECTED``, ``upstream=``) still
match, and the new ones follow:

    client=192.0.2.1, from=<s@x>, to=<r@x>, status=FILTERED, upstream=250 2.0.0 Ok,
    relay=127.0.0.1:10026, size=1234, delay=0.35, delays=0.01/0.30/0.04

(one line in the log). ``from=`` is absent before a MAIL FROM was accepted and ``from=<>``
is the null sender; there is one ``to=`` per accepted recipient; ``reason=`` says why a
message was not delivered; ``upstream=`` is the next server's final reply and ``relay=``
its address (``none`` when the message never reached it); ``size=`` is the message as
received, in bytes; ``delay=`` is the seconds from the end of the client's DATA command to
the reply to its final dot, and ``delays=receive/filter/upstream`` splits it as Postfix's
``delays=a/b/c/d`` does: reading the message from the client, running the filter, and
sending it to the next server until its reply.

``client=`` is the client as the connection was told it: a PROXY header's client, or the
address the client's own XFORWARD ADDR= gave (Postfix in before-queue mode); then ``via=``
follows with the address that connected to us (the balancer, the Postfix in front).

With milters configured, a refused or dropped message also says who decided, right after
``status=``: ``milter=<its Milters: entry>`` or ``filter=<FilterCommand's program>``.

Every message has a ``status=`` (see Status). A filter's 4xx refusal is ``DEFERRED`` (the
client retries later), a 5xx one is ``REJECTED`` (the client bounces the message).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs


class Status(enum.Enum):
    """What happened to one message; the value is what the log shows after ``status=``."""

    PASSED = "PASSED"  # no FilterCommand: relayed as received
    FILTERED = "FILTERED"  # the filter said deliver (possibly rewritten)
    SKIPPED = "SKIPPED"  # not filtered (Skip: authenticated)
    REJECTED = "REJECTED"  # refused with a permanent (5xx) reply
    DEFERRED = "DEFERRED"  # refused with a temporary (4xx) reply: the client retries
    DROPPED = "DROPPED"  # the filter answered 2xx: accepted, not delivered
    FILTER_ERROR = "FILTER-ERROR"  # the filter failed (signal, timeout, I/O): 451
    TOO_BIG = "TOO-BIG"  # over MaxMessageSize: 552


def refusal_status(reply_code: int) -> Status:
    """The status of a message refused with ``reply_code``: 4xx DEFERRED, 5xx REJECTED."""
    return Status.DEFERRED if 400 <= reply_code < 500 else Status.REJECTED


@attrs.frozen
class Delays:
    """Seconds spent in each stage of one message; a stage that did not run is 0."""

    receive: float = 0.0
    filter: float = 0.0
    upstream: float = 0.0

    @property
    def total(self) -> float:
        return self.receive + self.filter + self.upstream


def _address(address: str) -> str:
    return address if address.startswith("<") and address.endswith(">") else f"<{address}>"


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.2f}"


def _one_line(text: str) -> str:
    """Multi-line replies are joined so that the summary stays one line."""
    return " / ".join(part for part in text.replace("\r", "").split("\n") if part)


@attrs.frozen
class MessageSummary:
    """The facts about one message; ``line()`` is the summary log text (without the id).

    ``sender``: the accepted MAIL FROM address without brackets, "" or "<>" for the null
    sender, None when there was none. ``recipients``: the accepted ones, without brackets.
    """

    client: str
    status: Status
    sender: str | None = None
    recipients: Sequence[str] = ()
    reason: str | None = None
    upstream: str | None = None
    relay: str | None = None
    size: int | None = None
    delays: Delays | None = None
    decided_by: str | None = None  # milters configured: "milter=ADDRESS" or "filter=PROGRAM"
    # The address that connected, when `client` is another one (a PROXY header's client,
    # the client XFORWARD named): shown as via= after client=.
    via: str | None = None
    scanner: str | None = None  # Scanners: who decided and its result, or every result

    def fields(self) -> list[tuple[str, Field]]:
        """The line's fields as (key, value) pairs in their order; ``to`` repeats, one per
        recipient; ``size`` is an int and ``delay`` a float (seconds). The structured log
        formats (LogFormat: json, logfmt) emit these keys (docs/behaviour.md §9.5)."""
        parts: list[tuple[str, Field]] = [("client", self.client)]
        if self.via is not None and self.via != self.client:
            parts.append(("via", self.via))
        if self.sender is not None:
            parts.append(("from", _address(self.sender)))
        parts.extend(("to", _address(rcpt)) for rcpt in self.recipients)
        parts.append(("status", self.status.value))
        if self.decided_by:
            key, _, value = self.decided_by.partition("=")
            parts.append((key, value))
        if self.scanner:
            parts.append(("scanner", _one_line(self.scanner)))
        if self.reason:
            parts.append(("reason", _one_line(self.reason)))
        if self.upstream is not None:
            parts.append(("upstream", _one_line(self.upstream)))
        parts.append(("relay", self.relay or "none"))
        if self.size is not None:
            parts.append(("size", self.size))
        if self.delays is not None:
            d = self.delays
            parts.append(("delay", round(max(d.total, 0.0), 2)))
            parts.append(
                ("delays", f"{_seconds(d.receive)}/{_seconds(d.filter)}/{_seconds(d.upstream)}")
            )
        return parts

    def line(self) -> str:
        return ", ".join(f"{key}={render(value)}" for key, value in self.fields())


Field = str | int | float  # a value of a log line's field


def render(value: Field) -> str:
    """A field's value as the text lines show it (seconds with two decimals)."""
    return f"{value:.2f}" if isinstance(value, float) else str(value)
