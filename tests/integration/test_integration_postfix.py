"""A real Postfix with the proxy between its smtpd's, configured with contrib/postfix/.

swaks -> Postfix smtpd -> trio-proxsmtpd (and its filter) -> Postfix reinjection smtpd ->
queue -> a file, for the before-queue (smtpd_proxy_filter) and the after-queue
(content_filter) set-ups, using the shipped snippets with only their ports changed.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from integration_support import require
from postfix_support import PostfixSetup, free_port, postfix_starter, running_postfix

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.testing import run_proxy

pytestmark = pytest.mark.integration
__all__ = ["postfix_starter"]  # the fixture, used by name

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "postfix"
DEADLINE = 60

# Recipients at reject.example are refused; everything else is tagged and delivered, with
# the XFORWARD client the proxy passed on ($REMOTE, $REMOTE_HELO) in headers.
FILTER = """#!/bin/sh
case $RECIPIENTS in
    *@reject.example*) cat >/dev/null; echo '550 5.7.1 Refused by the test filter' >&2; exit 1 ;;
esac
printf 'X-Filtered: yes\\r\\nX-Remote: %s\\r\\nX-Remote-Helo: %s\\r\\n' "$REMOTE" "$REMOTE_HELO"
cat
"""


def snippet(name: str, *, public: int, proxy: int, reinject: int) -> list[str]:
    """The lines of a contrib/postfix file, with our free ports for the documented ones."""
    text = (CONTRIB / name).read_text()
    before = text
    text = re.sub(r"(127\.0\.0\.1\]?):10025\b", rf"\g<1>:{proxy}", text)
    text = re.sub(r"(127\.0\.0\.1\]?):10026\b", rf"\g<1>:{reinject}", text)
    assert text != before, f"{name} no longer mentions the ports of the example config"
    text = re.sub(r"^smtp(\s+)inet", rf"127.0.0.1:{public}\1inet", text, flags=re.MULTILINE)
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


async def swaks(port: int, to: str, *, source: str | None = None) -> str:
    result = await trio.run_process(
        [
            require("swaks"),
            *(("--local-interface", source) if source else ()),
            *("--server", f"127.0.0.1:{port}", "--helo", "client.test"),
            *("--from", "s@example.org", "--to", to),
            *("--header", "Subject: through postfix", "--body", "hello postfix"),
            *("--timeout", "30"),
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return (result.stdout + result.stderr).decode("utf-8", "replace")


async def delivered(postfix: PostfixSetup, count: int) -> list[str]:
    """The first ``count`` delivered files' text, waiting for them (the maillog on failure)."""
    files = await trio.to_thread.run_sync(
        functools.partial(postfix.wait_for_delivery, count, DEADLINE)
    )
    return [path.name + "\n" + path.read_text(errors="replace") for path in files]


async def start(starter: Callable[..., PostfixSetup], **kwargs: object) -> PostfixSetup:
    return await trio.to_thread.run_sync(functools.partial(starter, **kwargs))


@pytest.fixture
def filter_script(tmp_path: Path) -> Path:
    script = tmp_path / "filter.sh"
    script.write_text(FILTER)
    script.chmod(0o755)
    return script


async def test_before_queue(
    postfix_starter: Callable[..., PostfixSetup], filter_script: Path
) -> None:
    require("swaks")
    public, reinject = free_port(), free_port()
    async with run_proxy(
        f"FilterCommand: {filter_script}\n", upstream=f"127.0.0.1:{reinject}"
    ) as proxy:
        lines = snippet(
            "before-queue.master.cf", public=public, proxy=proxy.port, reinject=reinject
        )
        postfix = await start(postfix_starter, master_cf=lines, listens=[public, reinject])

        out = await swaks(public, "r@example.org")
        assert "250 2.0.0 Ok: queued" in out, out + postfix.log()
        (mail,) = await delivered(postfix, 1)
        assert mail.split("\n", 1)[0].endswith(".r@example.org")
        assert "X-Filtered: yes" in mail and "hello postfix" in mail
        assert "X-Remote: 127.0.0.1" in mail and "X-Remote-Helo: client.test" in mail

        out = await swaks(public, "r@reject.example")
        # the filter's own reply, to the client, in its SMTP session: nothing queued
        assert "<** 550 5.7.1 Refused by the test filter" in out, out
        assert "queued" not in out.split("550 5.7.1")[1]
        await trio.sleep(1)
        assert len(postfix.delivered()) == 1
        assert proxy.leftovers() == []


async def test_before_queue_summary_names_the_client_postfix_forwarded(
    postfix_starter: Callable[..., PostfixSetup],
    filter_script: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Postfix tells the proxy the real client with XFORWARD: the summary says it, with
    Postfix's own address as via= (docs/behaviour.md §9.2); the disconnect line follows."""
    require("swaks")
    caplog.set_level(logging.INFO, LOGGER_NAME)
    public, reinject = free_port(), free_port()
    async with run_proxy(
        f"FilterCommand: {filter_script}\n", upstream=f"127.0.0.1:{reinject}"
    ) as proxy:
        lines = snippet(
            "before-queue.master.cf", public=public, proxy=proxy.port, reinject=reinject
        )
        postfix = await start(postfix_starter, master_cf=lines, listens=[public, reinject])
        out = await swaks(public, "r@example.org", source="127.0.0.2")
        assert "250 2.0.0 Ok: queued" in out, out + postfix.log()
        (mail,) = await delivered(postfix, 1)
        assert "X-Remote: 127.0.0.2" in mail
    messages = [r.getMessage() for r in caplog.records]
    [summary] = [m for m in messages if "client=" in m]
    assert ": client=127.0.0.2, via=127.0.0.1, from=<s@example.org>, " in summary
    assert any(": disconnect from 127.0.0.1 " in m and " quit=1 " in m for m in messages)


async def test_after_queue(
    postfix_starter: Callable[..., PostfixSetup], filter_script: Path
) -> None:
    require("swaks")
    public, reinject = free_port(), free_port()
    async with run_proxy(
        f"FilterCommand: {filter_script}\n", upstream=f"127.0.0.1:{reinject}"
    ) as proxy:
        ports = {"public": public, "proxy": proxy.port, "reinject": reinject}
        main = snippet("after-queue.main.cf", **ports)
        master = [
            f"127.0.0.1:{public} inet n - n - - smtpd",
            *snippet("after-queue.master.cf", **ports),
        ]
        postfix = await start(
            postfix_starter, main_cf=main, master_cf=master, listens=[public, reinject]
        )

        out = await swaks(public, "r@example.org")
        assert "250 2.0.0 Ok: queued" in out, out + postfix.log()
        (mail,) = await delivered(postfix, 1)
        assert mail.split("\n", 1)[0].endswith(".r@example.org")
        assert "X-Filtered: yes" in mail and "hello postfix" in mail
        assert "X-Remote: 127.0.0.1" in mail and "X-Remote-Helo: client.test" in mail

        # queued first (250 to the client), then refused by the filter: Postfix bounces it
        out = await swaks(public, "r@reject.example")
        assert "250 2.0.0 Ok: queued" in out, out
        mails = await delivered(postfix, 2)
        bounce = mails[1]
        assert bounce.split("\n", 1)[0].endswith(".s@example.org"), bounce
        assert "Undelivered Mail Returned to Sender" in bounce
        assert "550 5.7.1 Refused by the test filter" in bounce
        assert proxy.leftovers() == []


def test_a_failed_start_shows_the_maillog() -> None:
    """The fixture's own check: a Postfix that does not start fails with its maillog."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))  # bound, not listening: Postfix's bind fails
        port = busy.getsockname()[1]
        failed = r"(?s)postfix start failed.*--- maillog:.*startup failed"
        listener = f"127.0.0.1:{port} inet n - n - - smtpd"
        with (
            pytest.raises(AssertionError, match=failed),
            running_postfix(master_cf=[listener], listens=[port]),
        ):
            pass
