"""IPv6 end to end (B11, B20): Listen and OutAddress on [::1], CLIENT/SERVER, %i, XCLIENT."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
from ops_support import free_port, proxy_process, write_config

from trio_proxsmtp.testing import FakeUpstream, open_client


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not have_ipv6_loopback(), reason="no IPv6 loopback (::1)")

FILTER = 'printf "%s\\n%s\\n" "$CLIENT" "$SERVER" > "$1/env"\nexec cat\n'


async def test_ipv6_relay_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "filter.sh").write_text(FILTER)
    port = free_port("::1")
    with trio.fail_after(30):
        async with FakeUpstream(host="::1") as up:
            assert up.address.startswith("[::1]:")
            config = write_config(
                tmp_path / "proxsmtpd.conf",
                f"Listen: [::1]:{port}\nOutAddress: {up.address}\nXClient: on\n"
                "Header: X-Peer: %i\n"
                f"FilterCommand: /bin/sh {tmp_path / 'filter.sh'} {tmp_path}\n",
            )
            with proxy_process(config, tmp_path / "proxy.log") as proxy:
                await proxy.started()
                assert f"listening on [::1]:{port}" in proxy.log()
                async with open_client("::1", port) as client:
                    replies = await client.send_message("a@x", ["b@x"], b"Subject: 6\r\n\r\nx\r\n")
                    assert [r.code for r in replies] == [250, 250, 354, 250]
                    await client.quit()
            [session] = up.sessions
            assert session.peer == "::1"
            xclient = [c for c in session.commands if c.upper().startswith(b"XCLIENT")]
            assert len(xclient) == 1
            assert b" ADDR=IPv6:::1" in xclient[0]
            [transaction] = up.transactions
            assert transaction.message.split(b"\r\n")[:2] == [b"Subject: 6", b"X-Peer: ::1"]
    assert (tmp_path / "env").read_text().splitlines() == ["::1", "::1"]
