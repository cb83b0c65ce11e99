"""`User: nobody`: bind a port below 1024 as root, then serve and filter as nobody."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from ops_support import proxy_process, write_config

from trio_proxsmtp.testing import FakeUpstream, open_client

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="switching User needs root"),
]

FILTER = 'id -u > "$1/uid"\nid -G > "$1/groups"\nexec cat\n'


def low_port() -> int:
    """A free privileged port, to show that User no longer prevents ports < 1024 (B16)."""
    for port in range(900, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody can write (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="trio-proxsmtp-ops-"))
    try:
        path.chmod(0o777)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


async def test_user_nobody_runs_proxy_and_filter_as_nobody(
    tmp_path: Path, shared_dir: Path
) -> None:
    nobody = pwd.getpwnam("nobody")
    (shared_dir / "filter.sh").write_text(FILTER)
    spool = shared_dir / "spool"
    spool.mkdir()
    spool.chmod(0o777)
    port = low_port()
    with trio.fail_after(30):
        async with FakeUpstream() as up:
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: 127.0.0.1:{port}\nOutAddress: {up.address}\nUser: nobody\n"
                f"TempDirectory: {spool}\n"
                f"FilterCommand: /bin/sh {shared_dir / 'filter.sh'} {shared_dir}\n",
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.started()
                fields = status(proxy.proc.pid)
                assert fields["Uid"].split() == [str(nobody.pw_uid)] * 4
                assert fields["Gid"].split() == [str(nobody.pw_gid)] * 4
                assert fields["Groups"] == ""
                async with open_client("127.0.0.1", port) as client:
                    replies = await client.send_message("a@x", ["b@x"], b"Subject: u\r\n\r\nx\r\n")
                    assert replies[-1].code == 250
                assert len(up.transactions) == 1
                assert "running as root" not in proxy.log()
    assert (shared_dir / "uid").read_text().strip() == str(nobody.pw_uid)
    assert (shared_dir / "groups").read_text().split() == [str(nobody.pw_gid)]
    assert list(spool.iterdir()) == []
