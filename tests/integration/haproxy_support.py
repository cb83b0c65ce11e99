"""A real HAProxy for the tests, made from contrib/haproxy/haproxy.cfg.

`haproxy_config` rewrites the shipped file for a test: its frontend on a free loopback
port, its servers on the given loopback ports, "send-proxy-v2" or "send-proxy", and a
short health-check interval.  `run_haproxy` starts ``haproxy -db -f CFG`` (foreground) and
stops it by pid when the block ends (integration_support.spawn).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from integration_support import free_port, require, spawn, wait_listening

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "contrib" / "haproxy" / "haproxy.cfg"


HTTP_CHECK = "    option httpchk GET /readyz\n    http-check expect status 200\n"
SMTP_CHECK = "    option smtpchk EHLO haproxy-check.localdomain\n"


def haproxy_config(
    front_port: int,
    server_ports: Sequence[int],
    *,
    send_proxy: str = "send-proxy-v2",
    check_interval: str = "200ms",
    metrics_ports: Sequence[int] | None = None,
) -> str:
    """The shipped config, listening on 127.0.0.1:front_port, balancing `server_ports`.

    With `metrics_ports` (each instance's MetricsListen) the checks are the shipped ones,
    /readyz; without, the file's alternative for instances without MetricsListen, an SMTP
    check (option smtpchk, fall 2)."""
    text = HAPROXY_CFG.read_text()
    text, binds = re.subn(r"(?m)^(\s*)bind \S+$", rf"\1bind 127.0.0.1:{front_port}", text)
    text = re.sub(r"(?m)^\s*server .*\n", "", text)
    checks = 1
    if metrics_ports is None:
        checks = text.count(HTTP_CHECK)
        text = text.replace(HTTP_CHECK, SMTP_CHECK).replace(" fall 1 ", " fall 2 ")
    ports = metrics_ports or [None] * len(server_ports)
    servers = "".join(
        f"    server proxsmtpd{n} 127.0.0.1:{port}{f' port {check}' if check else ''}\n"
        for n, (port, check) in enumerate(zip(server_ports, ports, strict=True), 1)
    )
    text, backends = re.subn(r"(?m)^(backend .*\n(?:[ \t]+.*\n)*)", rf"\g<1>{servers}", text)
    text, defaults = re.subn(
        r"default-server send-proxy-v2 check inter \S+",
        f"default-server {send_proxy} check inter {check_interval}",
        text,
    )
    assert (binds, backends, defaults, checks) == (1, 1, 1, 1), (
        "contrib/haproxy/haproxy.cfg changed shape"
    )
    return text


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``haproxy -c -f path``: does HAProxy accept this file?"""
    return subprocess.run(
        [require("haproxy"), "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@asynccontextmanager
async def run_haproxy(
    workdir: Path,
    server_ports: Sequence[int],
    *,
    send_proxy: str = "send-proxy-v2",
    check_interval: str = "200ms",
    metrics_ports: Sequence[int] | None = None,
) -> AsyncIterator[int]:
    """HAProxy in the foreground in front of `server_ports`; yields its frontend port.

    Its log (stderr) is kept in ``workdir/haproxy.log``.
    """
    binary = require("haproxy")
    port = free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(
        haproxy_config(
            port,
            server_ports,
            send_proxy=send_proxy,
            check_interval=check_interval,
            metrics_ports=metrics_ports,
        )
    )
    async with spawn([binary, "-db", "-f", str(config)], log=workdir / "haproxy.log") as process:
        await wait_listening(port, process)
        yield port
