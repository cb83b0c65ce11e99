"""A real postgrey as PolicyService (issue 23, docs/behaviour.md §11.9): the first attempt
of a triplet is deferred with postgrey's own reply; a retry after the delay is delivered,
with the X-Greylist header postgrey asks to prepend.  postgrey runs as the test's child on a
free loopback port with a temporary database and a 1-second delay (the one real sleep)."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest
import trio
from integration_support import free_port, require, spawn, wait_listening

from trio_proxsmtp.testing import FakeUpstream, run_proxy

pytestmark = pytest.mark.integration

MESSAGE = b"From: s@example.org\r\nSubject: greylisted\r\n\r\nbody\r\n"


async def test_postgrey_defers_the_first_attempt_and_passes_the_retry(tmp_path: Path) -> None:
    postgrey = require("postgrey")
    port = free_port()
    database = tmp_path / "db"
    database.mkdir()
    empty = tmp_path / "empty-whitelist"
    empty.write_text("")
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    argv = [
        postgrey,
        f"--inet=127.0.0.1:{port}",
        f"--dbdir={database}",
        f"--pidfile={tmp_path / 'postgrey.pid'}",
        "--delay=1",
        f"--user={user}",
        f"--group={group}",
        f"--whitelist-clients={empty}",
        f"--whitelist-recipients={empty}",
        "--auto-whitelist-clients=0",
        "--hostname=postgrey.test",
    ]
    log = tmp_path / "postgrey.log"
    config = f"PolicyService: inet:127.0.0.1:{port}\nPolicyTimeout: 10\n"
    with trio.fail_after(40):
        async with spawn(argv, log=log) as process:
            await wait_listening(port, process)
            async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
                async with proxy.connect() as client:
                    first = await client.send_message("s@example.org", ["r@example.net"], MESSAGE)
                    await client.quit()
                assert first[1].code == 450, log.read_text()
                assert "Recipient address rejected: Greylisted" in first[1].text
                assert not up.transactions
                await trio.sleep(2.2)  # past --delay=1 (postgrey counts whole seconds)
                async with proxy.connect() as client:
                    retry = await client.send_message("s@example.org", ["r@example.net"], MESSAGE)
                    await client.quit()
    assert [r.code for r in retry] == [250, 250, 354, 250], log.read_text()
    [delivered] = up.transactions
    assert delivered.rcpt_to == ["r@example.net"]
    assert delivered.message.startswith(b"X-Greylist: delayed ")
    assert b"by postgrey" in delivered.message.split(b"\r\n", 1)[0]
    assert delivered.message.endswith(MESSAGE)
