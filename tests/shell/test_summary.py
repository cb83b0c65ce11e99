"""The per-message summary line (trio_proxsmtp.summary)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.message.summary import Delays, MessageSummary, Status, refusal_status


def test_a_delivered_message_has_every_field_in_order() -> None:
    summary = MessageSummary(
        client="192.0.2.1",
        status=Status.FILTERED,
        sender="s@x",
        recipients=["r@x", "q@x"],
        upstream="250 2.0.0 Ok: queued as 1",
        relay="127.0.0.1:10026",
        size=1234,
        delays=Delays(receive=0.01, filter=0.3, upstream=0.04),
    )
    assert summary.line() == (
        "client=192.0.2.1, from=<s@x>, to=<r@x>, to=<q@x>, status=FILTERED, "
        "upstream=250 2.0.0 Ok: queued as 1, relay=127.0.0.1:10026, size=1234, "
        "delay=0.35, delays=0.01/0.30/0.04"
    )


def test_a_message_without_filter_has_a_status() -> None:
    line = MessageSummary(client="192.0.2.1", status=Status.PASSED, sender="s@x").line()
    assert line == "client=192.0.2.1, from=<s@x>, status=PASSED, relay=none"


@pytest.mark.parametrize("null", ["", "<>"])
def test_null_sender_reads_as_brackets(null: str) -> None:
    line = MessageSummary(client="c", status=Status.PASSED, sender=null).line()
    assert ", from=<>, " in line


def test_a_refusal_never_reached_the_next_server() -> None:
    line = MessageSummary(
        client="192.0.2.1",
        status=refusal_status(451),
        sender="s@x",
        recipients=["r@x"],
        reason="451 4.3.0 Scanner unavailable\n",
        size=10,
        delays=Delays(receive=1, filter=2),
    ).line()
    assert line == (
        "client=192.0.2.1, from=<s@x>, to=<r@x>, status=DEFERRED, "
        "reason=451 4.3.0 Scanner unavailable, relay=none, size=10, "
        "delay=3.00, delays=1.00/2.00/0.00"
    )


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (421, Status.DEFERRED),
        (451, Status.DEFERRED),
        (550, Status.REJECTED),
        (554, Status.REJECTED),
    ],
)
def test_temporary_and_permanent_refusals_differ(code: int, status: Status) -> None:
    assert refusal_status(code) is status


def test_the_first_release_fields_keep_their_places() -> None:
    """client=, from=, to=, status=, reason=, upstream= come first, as before."""
    line = MessageSummary(
        client="c", status=Status.REJECTED, sender="s", recipients=["r"], reason="x", upstream="y"
    ).line()
    names = [part.split("=", 1)[0] for part in line.split(", ")]
    assert names[:6] == ["client", "from", "to", "status", "reason", "upstream"]


@given(
    reason=st.text(),
    upstream=st.text(),
    delays=st.tuples(*[st.floats(0, 1e6, allow_nan=False)] * 3),
)
def test_always_one_line(reason: str, upstream: str, delays: tuple[float, float, float]) -> None:
    line = MessageSummary(
        client="c",
        status=Status.FILTERED,
        reason=reason,
        upstream=upstream,
        delays=Delays(*delays),
    ).line()
    assert "\n" not in line and "\r" not in line
    assert re.search(r", delay=[0-9.]+, delays=[0-9.]+/[0-9.]+/[0-9.]+$", line)
