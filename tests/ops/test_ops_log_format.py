"""LogFormat json and logfmt from the real daemon (docs/behaviour.md §9.5): a busy run with
Workers 2, every line it writes parsed, each with the same base keys; the summaries and
disconnect lines with their fields; the start-up lines once."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import trio
from ops_support import free_port, proxy_process, write_config

from trio_proxsmtp.common.log import ID_PATTERN
from trio_proxsmtp.common.log_format import BASE_KEYS
from trio_proxsmtp.testing import FakeUpstream, open_client

# Rejects a message whose Subject is "reject", passes the others.
FILTER = """#!/bin/sh
msg=$(cat)
case "$msg" in
*"Subject: reject"*) echo "550 5.7.1 rejected by the test filter" >&2; exit 1 ;;
esac
printf '%s\\r\\n' "$msg"
"""


def parse(line: str, fmt: str) -> dict[str, object]:
    if fmt == "json":
        data = json.loads(line)
        assert isinstance(data, dict)
        return data
    record: dict[str, object] = {}
    for word in shlex.split(line):
        key, sep, value = word.partition("=")
        assert sep, (word, line)
        if key == "to":
            record.setdefault("to", [])
            assert isinstance(record["to"], list)
            record["to"].append(value)
        else:
            assert key not in record, (key, line)
            record[key] = value
    return record


async def one_client(port: int, subject: str, rcpts: list[str]) -> int:
    async with open_client("127.0.0.1", port) as client:
        body = f"From: s@x\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()
        replies = await client.send_message("s@x", rcpts, body)
        await client.quit()
    return replies[-1].code


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
async def test_every_line_of_a_busy_run_parses(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "filter.sh").write_text(FILTER)
    port, metrics_port = free_port(), free_port()
    with trio.fail_after(60):
        async with FakeUpstream() as up:
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\n"
                f"TempDirectory: {tmp_path}\nFilterCommand: /bin/sh {tmp_path / 'filter.sh'}\n"
                f"MetricsListen: 127.0.0.1:{metrics_port}\nWorkers: 2\nLogFormat: {fmt}\n",
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.wait_log("worker 1 of 2 serving", 1)
                await proxy.wait_log("worker 2 of 2 serving", 1)
                codes: list[int] = []

                async def run(n: int) -> None:
                    subject = "reject" if n % 3 == 0 else f"pass{n}"
                    codes.append(await one_client(port, subject, ["r@x", "q@x"][: 1 + n % 2]))

                async with trio.open_nursery() as nursery:
                    for n in range(9):
                        nursery.start_soon(run, n)
                proxy.signal(15)
                assert await proxy.wait_exit() == 0
    assert sorted(codes) == [250] * 6 + [550] * 3
    lines = proxy.log().splitlines()
    records = [parse(line, fmt) for line in lines]  # every line is one record
    for record in records:
        assert list(record)[: len(BASE_KEYS)] == list(BASE_KEYS)
        assert record["level"] in ("debug", "info", "warning", "error", "critical")
    summaries = [r for r in records if r["event"] == "summary"]
    assert sorted(str(r["status"]) for r in summaries) == ["FILTERED"] * 6 + ["REJECTED"] * 3
    for summary in summaries:
        assert summary["client"] == "127.0.0.1" and summary["from"] == "<s@x>"
        assert summary["to"] in (["<r@x>"], ["<r@x>", "<q@x>"])
        assert summary["relay"] != ""
        assert str(summary["worker"]) in ("0", "1")
    assert any("reason" in s for s in summaries if s["status"] == "REJECTED")
    disconnects = [r for r in records if r["event"] == "disconnect"]
    assert len(disconnects) == 9
    for gone in disconnects:
        assert gone["client"] == "127.0.0.1" and str(gone["quit"]) == "1"
        assert int(str(gone["commands"])) >= 5
    # Every line of a connection carries its id; both workers served.
    by_id = [r for r in records if r["id"] not in (None, "")]
    assert all(re.fullmatch(ID_PATTERN, str(r["id"])) for r in by_id)
    assert {str(r["worker"]) for r in summaries} <= {"0", "1"}
    # Start-up lines once: the supervisor says them (worker null), each worker its own.
    texts = [str(r["msg"]) for r in records]
    assert sum(t.startswith("listening on ") for t in texts) == 1
    assert sum("no filter command" in t for t in texts) == 0
    assert sum(t.startswith("metrics on http://127.0.0.1:") for t in texts) == 1
    assert sum(" of 2 serving " in t for t in texts) == 2
    [listening] = [r for r in records if str(r["msg"]).startswith("listening on ")]
    assert listening["event"] == "listening" and listening["worker"] in (None, "")
