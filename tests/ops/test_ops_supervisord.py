"""contrib/supervisord.conf under the real supervisord, and the systemd unit's syntax.

The test takes the [program:trio-proxsmtpd] section of the contrib file as it is and only
points its command, log file and environment at this checkout and at tmp_path.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from ops_support import ENV, ROOT, background, free_port, group_alive, wait_for, write_config

from trio_proxsmtp.config.model import Config
from trio_proxsmtp.testing import FakeUpstream, open_client

CONTRIB = ROOT / "contrib"
PROGRAM = "program:trio-proxsmtpd"
NAME = "trio-proxsmtpd"
VENV_SCRIPT = "/opt/trio-proxsmtpd/bin/trio-proxsmtpd"  # the README's venv install

# Messages from slow@... make the filter record its process group and hang.
FILTER = """\
case "$SENDER" in slow*) echo $$ >> "$1/pids"; touch "$1/started"; sleep 60;; esac
exec cat
"""

pytestmark = pytest.mark.skipif(
    shutil.which("supervisord") is None or shutil.which("supervisorctl") is None,
    reason="supervisor is not installed (pip install supervisor, in the test extra)",
)


def contrib_program() -> dict[str, str]:
    parser = configparser.RawConfigParser()
    parser.read(CONTRIB / "supervisord.conf")
    return dict(parser[PROGRAM])


def test_contrib_stop_wait_exceeds_the_default_shutdown_timeout() -> None:
    program = contrib_program()
    assert program["stopsignal"] == "TERM"
    assert int(program["stopwaitsecs"]) > Config().shutdown_timeout
    assert " -d " in program["command"] and " -f " in program["command"]
    assert program["command"].startswith(VENV_SCRIPT + " ")


def supervisord_conf(tmp_path: Path, proxy_conf: Path) -> Path:
    program = contrib_program()
    # the venv install of the README, as this checkout's interpreter runs it
    program["command"] = program["command"].replace(
        VENV_SCRIPT, f"{sys.executable} -m trio_proxsmtp", 1
    )
    program["command"] = program["command"].replace("/etc/trio-proxsmtpd.conf", str(proxy_conf))
    program["stdout_logfile"] = str(tmp_path / "proxy.log")
    program["directory"] = str(ROOT)
    program["environment"] = f'PYTHONPATH="{ROOT}"'
    sections = {
        "unix_http_server": {"file": str(tmp_path / "supervisor.sock")},
        "supervisord": {
            "logfile": str(tmp_path / "supervisord.log"),
            "pidfile": str(tmp_path / "supervisord.pid"),
            "childlogdir": str(tmp_path),
            "nodaemon": "true",
            "loglevel": "info",
        },
        "rpcinterface:supervisor": {
            "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
        },
        "supervisorctl": {"serverurl": f"unix://{tmp_path / 'supervisor.sock'}"},
        PROGRAM: program,
    }
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
        for name, values in sections.items()
    )
    return write_config(tmp_path / "supervisord.conf", text)


async def test_supervisord_runs_stops_and_restarts_the_proxy(tmp_path: Path) -> None:
    (tmp_path / "filter.sh").write_text(FILTER)
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    with trio.fail_after(60):
        async with FakeUpstream() as up:
            proxy_conf = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\nShutdownTimeout: 2\n"
                f"TempDirectory: {spool}\n"
                f"FilterCommand: /bin/sh {tmp_path / 'filter.sh'} {tmp_path}\n"
                # One process: the log counts below are per process ("listening on" and
                # "received SIGTERM" are logged by each worker); test_ops_workers covers N.
                "Workers: 1\n",
            )
            conf = supervisord_conf(tmp_path, proxy_conf)
            proxy_log, sup_log = tmp_path / "proxy.log", tmp_path / "supervisord.log"

            async def ctl(*args: str) -> str:
                done = await trio.run_process(
                    ["supervisorctl", "-c", str(conf), *args],
                    capture_stdout=True,
                    check=False,
                    env=ENV,
                )
                return bytes(done.stdout).decode()

            def log_count(path: Path, text: str) -> int:
                return path.read_text().count(text) if path.exists() else 0

            async def deliver(sender: str) -> None:
                async with open_client("127.0.0.1", port) as client:
                    replies = await client.send_message(sender, ["b@x"], b"Subject: s\r\n\r\nx\r\n")
                    assert replies[-1].code == 250
                    await client.quit()

            with background(["supervisord", "-c", str(conf)], tmp_path / "supervisord.out"):
                await wait_for(lambda: log_count(proxy_log, "listening on") == 1)
                await deliver("a@x")
                assert len(up.transactions) == 1

                assert "started" in await ctl("restart", NAME)
                await wait_for(lambda: log_count(proxy_log, "listening on") == 2)
                assert log_count(sup_log, f"stopped: {NAME} (exit status 0)") == 1
                await deliver("a@x")
                assert len(up.transactions) == 2

                # Stop with a message stuck in its filter: done within the drain time.
                async with open_client("127.0.0.1", port) as client:
                    await client.command("EHLO c.example")
                    await client.command("MAIL FROM:<slow@x>")
                    await client.command("RCPT TO:<b@x>")
                    await client.command("DATA")
                    await client.send(b"Subject: slow\r\n\r\nx\r\n.\r\n")
                    await wait_for((tmp_path / "started").exists)
                    [pgid] = [int(p) for p in (tmp_path / "pids").read_text().split()]
                    before = trio.current_time()
                    assert "stopped" in await ctl("stop", NAME)
                    assert trio.current_time() - before < 2 + 5
                    assert (await client.read_reply()).code == 421
                assert log_count(sup_log, f"stopped: {NAME} (exit status 0)") == 2
                assert "STOPPED" in await ctl("status", NAME)
                assert not group_alive(pgid)
                assert list(spool.iterdir()) == []
                assert len(up.transactions) == 2
                log = proxy_log.read_text()
                assert log.count("received SIGTERM") == 2
                assert "grace period over" in log


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = (CONTRIB / "trio-proxsmtpd.service").read_text()
    for key in ("Type=notify", "KillSignal=SIGTERM", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert key in text.splitlines()
    [stop] = [line for line in text.splitlines() if line.startswith("TimeoutStopSec=")]
    assert int(stop.partition("=")[2]) > Config().shutdown_timeout
    assert " -d 3 " in next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert "Documentation=man:trio-proxsmtpd(8) man:trio-proxsmtpd.conf(5)" in text.splitlines()
    assert text.count(VENV_SCRIPT) == 2  # ExecStartPre and ExecStart
    # The unit names the installed script; verify a copy that names one that exists here.
    copy = tmp_path / "trio-proxsmtpd.service"
    copy.write_text(text.replace(VENV_SCRIPT, sys.executable))
    # Documentation=man:... is checked with man(1): our pages, laid out as a venv has them.
    for page, section in (("trio-proxsmtpd.8", "man8"), ("trio-proxsmtpd.conf.5", "man5")):
        (tmp_path / "man" / section).mkdir(parents=True)
        shutil.copy(ROOT / "man" / page, tmp_path / "man" / section / page)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        env={**os.environ, "MANPATH": str(tmp_path / "man")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if "trio-proxsmtpd.service" in line]
    assert problems == [], result.stderr
