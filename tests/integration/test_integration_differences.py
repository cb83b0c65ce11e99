"""The intended differences from proxsmtpd 1.10 (spec §15), each shown on both proxies.

Every test runs the same session through /usr/sbin/proxsmtpd and through us and asserts
what 1.10 does (so the test notices if the reference changes) and what we do instead.
The corpus test (test_integration_differential.py) covers everything that must be equal.

The documented list:

- B1   client pipelining: 1.10 loses the message; we pair every reply with its command.
- B6   an empty first message: 1.10 hangs; we deliver it.
- B7   the filter gets the message dot-unstuffed; its output is re-stuffed; a final CRLF
       is guaranteed (1.10: stuffed input, a "." line corrupts, no final newline hangs).
- B8   a "5xx-" filter reply becomes a final line (1.10: lone continuation, client hangs).
- B9   %d in Header: an RFC 5322 date with a correct offset (1.10: asctime, +051800).
- B13  the upstream going away: 421 to the client (1.10: EOF, or "451 Local Error").
- B15  the summary log says what the upstream answered (1.10: status=FILTERED).
- B18  MAIL/RCPT paired with their replies: "MAIL  FROM" and multi-line RCPT replies.
- B19  XFORWARD parsed as tokens (1.10 keeps the CRLF of a last ADDR in REMOTE).
- B20  XCLIENT carries HELO= and is followed by EHLO again.
- XFORWARD values are xtext-decoded, and "[UNAVAILABLE]" leaves REMOTE/REMOTE_HELO unset
  (1.10 passes "odd+20helo" and "UNAVAILABLE" on as they are).
- DATA with no valid recipient (or no MAIL) is refused at DATA (1.10 says 354, takes the
  message, then relays the upstream's refusal of its DATA as the reply to the final ".").
- An upstream refusal of our DATA is followed by RSET, so the next transaction is clean.
- The chunk of a refused BDAT is skipped, never run as commands (1.10 runs it).
- Bare CR/LF inside a message become CRLF (1.10 passes them through).
- A command line that is too long gets "500 5.5.2 Line too long" (1.10: no enhanced code).
- A filter that exits 0 with no output for a non-empty message gets "451 Local Error"
  (1.10 delivered an empty message).
- A filter the shell cannot run (exit 126/127) gets "451 Local Error" (1.10: a 550 with
  sh's message, bouncing every message and showing the path to senders).
"""

from __future__ import annotations

import logging
import re
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from differential import (
    EOF,
    HANG,
    Burst,
    Step,
    Transcript,
    run_session,
    start_c,
    start_ours,
)
from differential_corpus import (
    BODY,
    DATA,
    EHLO,
    ENV_DUMP,
    MAIL,
    QUIT,
    RCPT,
    data,
    line,
    transaction,
)

from trio_proxsmtp.testing import ClosePoint

pytestmark = pytest.mark.integration

QUEUED = b"250 2.0.0 Ok: queued as 1\r\n"
LOCAL_ERROR = b"451 Local Error\r\n"
SHORT = 3.0  # read timeout where 1.10 is expected to hang


async def both(
    tmp_path: Path,
    config: str,
    steps: tuple[Step, ...],
    upstream: dict[str, Any] | None = None,
    *,
    our_steps: tuple[Step, ...] | None = None,
    read_timeout: float = 8.0,
) -> tuple[Transcript, Transcript]:
    """(1.10's transcript, ours) for the same session."""
    (tmp_path / "c").mkdir()
    (tmp_path / "ours").mkdir()
    with trio.fail_after(60):
        theirs = await run_session(
            start_c, config, steps, tmp_path / "c", upstream, read_timeout=read_timeout
        )
        ours = await run_session(
            start_ours,
            config,
            steps if our_steps is None else our_steps,
            tmp_path / "ours",
            upstream,
            read_timeout=read_timeout,
        )
    return theirs, ours


async def test_b1_pipelined_commands(tmp_path: Path) -> None:
    steps = (EHLO, Burst(MAIL + RCPT + DATA, 3), data(BODY), QUIT)
    theirs, ours = await both(tmp_path, "FilterCommand: cat", steps, read_timeout=SHORT)
    # 1.10: 354 comes first, the replies drift out of step and nothing is delivered.
    assert theirs.replies[2] == b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
    assert b"Subject: t" not in theirs.upstream[0]
    assert ours.replies[2:] == (
        b"250 2.1.0 Ok\r\n",
        b"250 2.1.5 Ok\r\n",
        b"354 Start mail input; end with <CRLF>.<CRLF>\r\n",
        QUEUED,
        b"221 2.0.0 Bye\r\n",
    )
    assert b"DATA\r\nSubject: t\r\n\r\nbody\r\n.\r\n" in ours.upstream[0]


async def test_b6_empty_first_message(tmp_path: Path) -> None:
    steps = (EHLO, MAIL, RCPT, DATA, b".\r\n", QUIT)
    theirs, ours = await both(tmp_path, "FilterCommand: cat", steps, read_timeout=SHORT)
    assert theirs.replies[-1] == HANG
    assert b"DATA" not in theirs.upstream[0]
    assert ours.replies[-2:] == (QUEUED, b"221 2.0.0 Bye\r\n")
    assert b"DATA\r\n.\r\n" in ours.upstream[0]


async def test_b7_filter_sees_the_message_unstuffed(tmp_path: Path) -> None:
    body = b"Subject: t\r\n\r\n..hidden\r\n"
    steps = (EHLO, *transaction(body), QUIT)
    config = "FilterCommand: tee {tmp}/seen"
    (tmp_path / "c").mkdir()
    (tmp_path / "ours").mkdir()
    seen = tmp_path / "spool" / "seen"
    with trio.fail_after(60):
        theirs = await run_session(start_c, config, steps, tmp_path / "c")
        theirs_seen = seen.read_bytes()
        ours = await run_session(start_ours, config, steps, tmp_path / "ours")
        ours_seen = seen.read_bytes()
    assert theirs_seen == body
    assert ours_seen == b"Subject: t\r\n\r\n.hidden\r\n"
    # What reaches the upstream is the same: we re-stuff what 1.10 never unstuffed.
    assert theirs.upstream == ours.upstream
    assert b"\r\n..hidden\r\n.\r\n" in ours.upstream[0]


async def test_b7_dot_line_in_filter_output(tmp_path: Path) -> None:
    config = "FilterCommand: cat >/dev/null; printf 'Subject: t\\r\\n\\r\\n.\\r\\nafter\\r\\n'"
    theirs, ours = await both(tmp_path, config, (EHLO, *transaction(), QUIT))
    assert b"\r\n\r\n. \rafter\r\n.\r\n" in theirs.upstream[0]
    assert b"\r\n\r\n..\r\nafter\r\n.\r\n" in ours.upstream[0]
    assert theirs.replies == ours.replies


async def test_b7_filter_output_without_final_newline(tmp_path: Path) -> None:
    config = "TimeOut: 2\nFilterCommand: cat >/dev/null; printf 'Subject: t\\r\\n\\r\\nno newline'"
    theirs, ours = await both(tmp_path, config, (EHLO, *transaction(), QUIT))
    assert theirs.replies[-2:] == (LOCAL_ERROR, LOCAL_ERROR)
    assert theirs.upstream[0].endswith(b"no newline.\r\n")
    assert ours.replies[-2:] == (QUEUED, b"221 2.0.0 Bye\r\n")
    assert b"\r\nno newline\r\n.\r\n" in ours.upstream[0]


async def test_b8_multiline_filter_reply(tmp_path: Path) -> None:
    config = "FilterCommand: cat >/dev/null; echo '550-5.7.1 multi' >&2; exit 1"
    theirs, ours = await both(tmp_path, config, (EHLO, *transaction(), QUIT), read_timeout=SHORT)
    assert theirs.replies[-1] == HANG
    assert theirs.client_received.endswith(b"550-5.7.1 multi\r\n")
    assert ours.replies[-2:] == (b"550 5.7.1 multi\r\n", b"221 2.0.0 Bye\r\n")


async def test_b9_date_in_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zone = "Asia/Kolkata"
    if not Path("/usr/share/zoneinfo", zone).exists():
        pytest.skip("tzdata is not installed")
    config = "Header: X-D: %d"
    steps = (EHLO, *transaction(), QUIT)
    (tmp_path / "c").mkdir()
    (tmp_path / "ours").mkdir()

    with trio.fail_after(60):
        theirs = await run_session(
            partial(start_c, env={"TZ": zone}), config, steps, tmp_path / "c"
        )
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        try:
            ours = await run_session(start_ours, config, steps, tmp_path / "ours")
        finally:
            monkeypatch.undo()
            time.tzset()
    their_header = theirs.upstream[0].split(b"X-D: ")[1].split(b"\r\n")[0]
    our_header = ours.upstream[0].split(b"X-D: ")[1].split(b"\r\n")[0]
    # 1.10: asctime, offset minutes printed as seconds; us: RFC 5322 with +0530.
    assert their_header.endswith(b" +051800 (IST)")
    assert our_header.endswith(b" +0530")
    assert our_header[3:5] == b", "


async def test_no_valid_recipient_is_refused_at_data(tmp_path: Path) -> None:
    rejected = line("RCPT TO:<reject@x>")
    theirs, ours = await both(
        tmp_path,
        "FilterCommand: cat",
        (EHLO, MAIL, rejected, DATA, data(BODY), QUIT),
        our_steps=(EHLO, MAIL, rejected, DATA, QUIT),
    )
    # 1.10 says 354, takes the message, then relays the upstream's refusal of its DATA.
    assert theirs.replies[-3:] == (
        b"354 Start mail input; end with <CRLF>.<CRLF>\r\n",
        b"554 5.5.1 Error: no valid recipients\r\n",
        b"221 2.0.0 Bye\r\n",
    )
    assert b"DATA\r\n" in theirs.upstream[0]
    assert ours.replies[-2:] == (
        b"554 5.5.1 Error: no valid recipients\r\n",
        b"221 2.0.0 Bye\r\n",
    )
    assert b"DATA" not in ours.upstream[0]


async def test_data_without_mail_is_refused_at_data(tmp_path: Path) -> None:
    theirs, ours = await both(
        tmp_path, "FilterCommand: cat", (EHLO, DATA, data(BODY), QUIT), our_steps=(EHLO, DATA, QUIT)
    )
    assert theirs.replies[-3:-1] == (
        b"354 Start mail input; end with <CRLF>.<CRLF>\r\n",
        b"503 5.5.1 Error: need MAIL command\r\n",
    )
    assert ours.replies[-2] == b"503 5.5.1 Error: need MAIL command\r\n"
    assert b"DATA" not in ours.upstream[0]


async def test_upstream_refusing_our_data_gets_rset(tmp_path: Path) -> None:
    upstream = {"replies": {"DATA": "451 4.3.0 busy"}}
    theirs, ours = await both(
        tmp_path, "FilterCommand: cat", (EHLO, *transaction(), QUIT), upstream
    )
    assert theirs.replies == ours.replies
    assert theirs.replies[-2] == b"451 4.3.0 busy\r\n"
    assert theirs.upstream[0].endswith(b"DATA\r\nQUIT\r\n")
    assert ours.upstream[0].endswith(b"DATA\r\nRSET\r\nQUIT\r\n")


@pytest.mark.parametrize(
    ("close_at", "steps", "their_reply"),
    [
        (ClosePoint.ON_MAIL, (EHLO, MAIL, QUIT), EOF),
        (ClosePoint.ON_DATA, (EHLO, *transaction(), QUIT), LOCAL_ERROR),
        (ClosePoint.AFTER_DOT, (EHLO, *transaction(), QUIT), LOCAL_ERROR),
    ],
    ids=["on-mail", "on-data", "after-dot"],
)
async def test_b13_upstream_going_away_gives_421(
    tmp_path: Path, close_at: ClosePoint, steps: tuple[Step, ...], their_reply: bytes
) -> None:
    theirs, ours = await both(tmp_path, "FilterCommand: cat", steps, {"close_at": close_at})
    assert their_reply in theirs.replies
    assert b"421 4.4.1 smtp.passthru Error: upstream closed the connection\r\n" in ours.replies
    assert ours.replies[-1] == EOF


async def test_b15_summary_log_has_the_upstream_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    upstream = {"replies": {".": "550 5.7.1 spam"}}
    theirs, ours = await both(
        tmp_path, "FilterCommand: cat", (EHLO, *transaction(), QUIT), upstream
    )
    assert theirs.replies == ours.replies
    their_log = (tmp_path / "c" / "proxsmtpd.log").read_text()
    assert "from=s@x, to=r@x, status=FILTERED" in their_log
    assert "550" not in their_log.split("status=FILTERED")[0].splitlines()[-1]
    summaries = [r.getMessage() for r in caplog.records if "status=" in r.getMessage()]
    assert len(summaries) == 1
    assert "from=<s@x>, to=<r@x>, status=FILTERED" in summaries[0]
    assert "550 5.7.1 spam" in summaries[0]


async def test_b18_two_spaces_and_multiline_rcpt_reply(tmp_path: Path) -> None:
    config = ENV_DUMP + "\nTempDirectory: {tmp}"
    steps = (EHLO, *transaction(mail=line("MAIL  FROM:<s@x>")), QUIT)
    upstream = {"replies": {"RCPT": "250-ok\n250 fine"}}
    theirs, ours = await both(tmp_path, config, steps, upstream)
    assert theirs.replies == ours.replies
    assert b"SENDER=unset|RECIPIENTS=r@x,<r@x|" in theirs.upstream[0]
    assert b"SENDER=s@x|RECIPIENTS=r@x|" in ours.upstream[0]


async def test_b19_xforward_addr_at_end_of_line(tmp_path: Path) -> None:
    config = ENV_DUMP + "\nTempDirectory: {tmp}"
    steps = (EHLO, line("XFORWARD HELO=h.example ADDR=192.0.2.7"), *transaction(), QUIT)
    theirs, ours = await both(tmp_path, config, steps)
    assert b"|REMOTE=192.0.2.7\r\n|REMOTE_HELO=h.example|" in theirs.upstream[0]
    assert b"|REMOTE=192.0.2.7|REMOTE_HELO=h.example|" in ours.upstream[0]


async def test_xforward_values_are_decoded(tmp_path: Path) -> None:
    config = ENV_DUMP + "\nTempDirectory: {tmp}"
    xforward = line("XFORWARD HELO=odd+20helo ADDR=[UNAVAILABLE] PROTO=ESMTP")
    steps = (EHLO, xforward, *transaction(), QUIT)
    theirs, ours = await both(tmp_path, config, steps)
    assert theirs.replies == ours.replies
    assert b"|REMOTE=UNAVAILABLE|REMOTE_HELO=odd+20helo|" in theirs.upstream[0]
    assert b"|REMOTE=unset|REMOTE_HELO=odd helo|" in ours.upstream[0]


async def test_b20_xclient_then_ehlo_again(tmp_path: Path) -> None:
    theirs, ours = await both(tmp_path, "XClient: on", (EHLO, MAIL, QUIT))
    assert theirs.replies == ours.replies
    assert b"XCLIENT ADDR=127.0.0.1\r\nMAIL FROM:<s@x>\r\n" in theirs.upstream[0]
    # Ours: NAME= (the forward-confirmed host name), PROTO= and HELO= too (what the fake
    # lists), then EHLO again.
    assert re.search(
        rb"XCLIENT ADDR=127\.0\.0\.1 NAME=\S+ PROTO=ESMTP HELO=client\.example\r\n"
        rb"EHLO client\.example\r\nMAIL FROM:<s@x>\r\n",
        ours.upstream[0],
    )


async def test_refused_bdat_chunk_is_not_run_as_commands(tmp_path: Path) -> None:
    steps = (EHLO, b"BDAT 6 LAST\r\nNOOP\r\n", QUIT)
    theirs, ours = await both(tmp_path, "FilterCommand: cat", steps)
    not_implemented = b"502 Command not implemented\r\n"
    assert theirs.replies[2:] == (not_implemented, b"250 2.0.0 Ok\r\n")
    assert b"NOOP" in theirs.upstream[0]
    assert ours.replies[2:] == (not_implemented, b"221 2.0.0 Bye\r\n")
    assert b"NOOP" not in ours.upstream[0] and b"BDAT" not in ours.upstream[0]


async def test_bare_line_feeds_in_the_message_become_crlf(tmp_path: Path) -> None:
    body = b"Subject: t\r\n\r\na\nb\r\n"
    theirs, ours = await both(tmp_path, "FilterCommand: cat", (EHLO, *transaction(body), QUIT))
    assert theirs.replies == ours.replies
    assert b"\r\n\r\na\nb\r\n.\r\n" in theirs.upstream[0]
    assert b"\r\n\r\na\r\nb\r\n.\r\n" in ours.upstream[0]


async def test_line_too_long_has_an_enhanced_code(tmp_path: Path) -> None:
    steps = (EHLO, line("NOOP " + "x" * 4300), QUIT)
    theirs, ours = await both(tmp_path, "FilterCommand: cat", steps)
    assert theirs.replies[2] == b"500 Line too long\r\n"
    assert ours.replies[2] == b"500 5.5.2 Line too long\r\n"
    # Neither forwards any part of it.
    assert b"xxxx" not in theirs.upstream[0]
    assert b"xxxx" not in ours.upstream[0]


async def test_empty_filter_output_is_a_filter_error(tmp_path: Path) -> None:
    config = "FilterCommand: cat >/dev/null; exit 0"
    theirs, ours = await both(tmp_path, config, (EHLO, *transaction(), QUIT))
    assert theirs.replies[-2:] == (QUEUED, b"221 2.0.0 Bye\r\n")
    assert b"DATA\r\n.\r\n" in theirs.upstream[0]
    assert ours.replies[-2:] == (LOCAL_ERROR, b"221 2.0.0 Bye\r\n")
    assert not ours.upstream or b"DATA" not in ours.upstream[0]


async def test_filter_not_found_is_a_temporary_failure(tmp_path: Path) -> None:
    # Shell syntax, so our start-up check only warns (a plain missing program is refused at
    # start); the shell then exits 127 for both proxies.
    config = 'FilterCommand: {tmp}/nonexistent-filter "$SENDER"'
    theirs, ours = await both(tmp_path, config, (EHLO, *transaction(), QUIT))
    assert theirs.replies[-2].startswith(b"550 Content Rejected; ")
    assert b"nonexistent-filter" in theirs.replies[-2]
    assert ours.replies[-2:] == (LOCAL_ERROR, b"221 2.0.0 Bye\r\n")
