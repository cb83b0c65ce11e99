"""Exim and OpenSMTPD for the interoperability tests, run from temporary configs.

Both binaries come from ``tests/interop/.mtas/`` (made by ``tests/interop/unpack-mtas``, which
.ci/run calls): they conflict with the installed Postfix as Debian packages, so they are
unpacked, never installed. Each instance lives in a fresh directory under /tmp (mode 0755:
the MTAs drop to their own users, who must reach it; pytest's tmp_path parents are 0700),
listens on free loopback ports, is stopped by pid and its directory removed afterwards.

Exim (4.96, ``exim4 -C CONF``, as root) plays both roles in one daemon:

- next server of the proxy: it accepts mail for any domain but ``proxy.test`` on its plain
  port (STARTTLS offered) and on its TLS-on-connect port, and stores each message as a file
  in ``mail/``; recipient local part ``refuse-rcpt`` is refused at RCPT (550), a message
  with a recipient ``refuse-dot`` at the final dot (550, the DATA ACL);
- client of the proxy: ``inject()`` hands it a message for ``@proxy.test`` with
  ``-odf`` (delivery in the foreground), which its smtp transport sends to the proxy's port
  (the macro PROXY_PORT); mail for ``@proxy.test`` that comes in by SMTP on ``relay_port``
  goes to the port last given to ``relay_through()``; what it did is in ``mainlog()`` and
  its queue (``queue()``).

OpenSMTPD is in opensmtpd_support.py.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_proxsmtp.testing.certs import TestCertificates

MTAS = Path(__file__).resolve().parent / ".mtas"
DEADLINE = 20.0


def require_mta(binary: str, *users: str) -> Path:
    """The unpacked binary (``exim4``, ``smtpd``); skip (a failure in CI) when absent."""
    path = MTAS / "usr" / "sbin" / binary
    if not path.exists():
        pytest.skip(f"{path} is missing: run tests/interop/unpack-mtas (as root)")
    if os.geteuid() != 0:
        pytest.skip(f"{binary} must be started as root")
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.skip(f"no user {user}: run tests/interop/unpack-mtas")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_accepting(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise AssertionError(f"{process.args!r} did not listen on {port}:\n{text}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a deadline, to the process group it leads."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def private_copy(certs: TestCertificates, directory: Path, user: str) -> tuple[Path, Path, Path]:
    """(CA, certificate, key) copied where ``user`` can read them."""
    directory.mkdir()
    owner = pwd.getpwnam(user)
    copies = []
    for source in (certs.ca, certs.certificate, certs.key):
        target = directory / source.name
        shutil.copy(source, target)
        os.chown(target, owner.pw_uid, owner.pw_gid)
        target.chmod(0o600 if source == certs.key else 0o644)
        copies.append(target)
    return copies[0], copies[1], copies[2]


EXIM_CONF = """\
PROXY_PORT = 25
PROXY_TLS = try
exim_path = {binary}
exim_user = Debian-exim
exim_group = Debian-exim
keep_environment =
spool_directory = {root}/spool
log_file_path = {root}/log/%slog
primary_hostname = exim.test
qualify_domain = exim.test
local_interfaces = 127.0.0.1
tls_on_connect_ports = {tls_port}
tls_certificate = {certificate}
tls_privatekey = {key}
tls_advertise_hosts = *
chunking_advertise_hosts = *
pipelining_advertise_hosts = *
smtputf8_advertise_hosts = *
accept_8bitmime = true
message_size_limit = 10M
host_lookup =
log_selector = +pipelining +received_recipients
rfc1413_hosts =
acl_smtp_rcpt = check_rcpt
acl_smtp_data = check_data
received_header_text = Received: by exim.test ($received_protocol) id $message_exim_id
freeze_tell =
ignore_bounce_errors_after = 0s
timeout_frozen_after = 1d

begin acl
check_rcpt:
  deny local_parts = refuse-rcpt
       message = refused at RCPT by exim
  accept
check_data:
  deny condition = ${{if match{{$recipients}}{{refuse-dot}}}}
       message = refused at the final dot by exim
  accept

begin routers
to_proxy:
  driver = manualroute
  domains = proxy.test
  condition = ${{if or{{{{eq{{$received_protocol}}{{local}}}}\\
    {{eq{{$received_port}}{{{relay_port}}}}}}}}}
  route_list = * 127.0.0.1
  self = send
  transport = ${{if eq{{PROXY_TLS}}{{implicit}}{{proxy_smtps}}{{proxy_smtp}}}}
store:
  driver = accept
  transport = store

begin transports
proxy_smtp:
  driver = smtp
  port = ${{if eq{{PROXY_PORT}}{{25}}{{${{readfile{{{root}/proxy_port}}{{}}}}}}{{PROXY_PORT}}}}
  hosts_avoid_tls = ${{if eq{{PROXY_TLS}}{{no}}{{*}}{{}}}}
  hosts_require_tls = ${{if eq{{PROXY_TLS}}{{yes}}{{*}}{{}}}}
  tls_verify_certificates = {ca}
  tls_verify_cert_hostnames =
  hosts_try_chunking = *
  allow_localhost
proxy_smtps:
  driver = smtp
  protocol = smtps
  port = PROXY_PORT
  tls_verify_certificates = {ca}
  tls_verify_cert_hostnames =
  hosts_require_tls = *
  allow_localhost
store:
  driver = appendfile
  directory = {root}/mail
  user = Debian-exim
  return_path_add = false
  envelope_to_add = true
  delivery_date_add = false

begin retry
# Short: a later test whose proxy gets a port reused from a deferred one must not wait.
* * F,1d,1s

begin rewrite
"""


class Exim:
    """One Exim daemon (see the module docstring)."""

    def __init__(self, binary: Path, root: Path, port: int, tls_port: int, relay_port: int) -> None:
        self.binary = binary
        self.root = root
        self.port = port
        self.tls_port = tls_port
        self.relay_port = relay_port
        self.config = root / "exim.conf"
        self.mail = root / "mail"

    def argv(self, *args: str, proxy_port: int = 25, proxy_tls: str = "try") -> list[str]:
        """exim4 with this config; proxy_tls: try, yes (STARTTLS required), no, implicit."""
        return [
            str(self.binary),
            "-C",
            str(self.config),
            f"-DPROXY_PORT={proxy_port}",
            f"-DPROXY_TLS={proxy_tls}",
            *args,
        ]

    def relay_through(self, proxy_port: int) -> None:
        """Mail that comes in on ``relay_port`` for @proxy.test goes to this proxy port."""
        path = self.root / "proxy_port"
        path.write_text(str(proxy_port))
        path.chmod(0o644)

    def mainlog(self) -> str:
        path = self.root / "log" / "mainlog"
        return path.read_text(errors="replace") if path.exists() else ""

    def delivered(self) -> list[bytes]:
        """The stored messages (as Exim wrote them), oldest first."""
        files = sorted(self.mail.glob("*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [p.read_bytes() for p in files if p.is_file()]

    def queue(self) -> list[str]:
        """The ids of the messages on the queue."""
        result = subprocess.run(
            self.argv("-bp"), capture_output=True, text=True, timeout=DEADLINE, check=True
        )
        # " 0m   197 1xaZJa-0001Hk-0o <sender>" per message, its recipients below.
        return re.findall(r"^\s*\S+\s+\S+\s+(\S+-\S+-\S+) <", result.stdout, re.MULTILINE)


@contextlib.contextmanager
def running_exim(certs: TestCertificates) -> Iterator[Exim]:
    binary = require_mta("exim4", "Debian-exim")
    root = Path(tempfile.mkdtemp(prefix="interop-exim."))
    root.chmod(0o755)
    exim_user = pwd.getpwnam("Debian-exim")
    try:
        for name in ("spool", "log", "mail"):
            (root / name).mkdir()
            os.chown(root / name, exim_user.pw_uid, exim_user.pw_gid)
        ca, certificate, key = private_copy(certs, root / "tls", "Debian-exim")
        exim = Exim(binary, root, free_port(), free_port(), free_port())
        exim.config.write_text(
            EXIM_CONF.format(
                binary=binary,
                root=root,
                tls_port=exim.tls_port,
                relay_port=exim.relay_port,
                certificate=certificate,
                key=key,
                ca=ca,
            )
        )
        ports = f"{exim.port}:{exim.tls_port}:{exim.relay_port}"
        process = subprocess.Popen(
            exim.argv("-bdf", "-oX", ports, "-oP", str(root / "exim.pid")),
            stdout=subprocess.DEVNULL,
            stderr=(root / "stderr").open("wb"),
            start_new_session=True,
        )
        try:
            wait_accepting(exim.port, process, root / "stderr")
            wait_accepting(exim.tls_port, process, root / "stderr")
            yield exim
        finally:
            stop(process)
    finally:
        shutil.rmtree(root, ignore_errors=True)
