"""A real Postfix for tests: started from a temporary config directory, stopped afterwards.

    from postfix_support import PostfixSetup, free_port, running_postfix

    with running_postfix(
        main_cf=["smtpd_tls_security_level = may", ...],
        master_cf=[f"127.0.0.1:{port} inet n - n - - smtpd", "  -o syslog_name=x/in"],
        listens=[port],
    ) as postfix:
        ...  # send mail to 127.0.0.1:port
        files = postfix.wait_for_delivery(1)

or the pytest fixture ``postfix_starter`` (a function taking the same arguments, every
instance stopped at teardown). Everything lives in one fresh directory under /tmp (``root``):
``conf/`` (main.cf, master.cf), ``queue/``, ``data/`` (owned by user postfix), ``maillog``
(Postfix logs there through postlogd: no syslog needed) and ``mail/``, where every message
Postfix delivers (to any address: mydestination is empty and every transport is the pipe
service ``filedrop``) lands as one file per recipient, named ``QUEUEID.RECIPIENT``. The
directory is not under pytest's tmp_path because Postfix's unprivileged daemons must reach
it (tmp_path's parents are mode 0700).

The base main.cf listens on 127.0.0.1 only (inet_interfaces), relays for 127.0.0.0/8,
uses a unique ``myhostname``/``syslog_name`` per instance, and needs no DNS; the base
master.cf has Postfix's internal services and no inet listener: the caller adds its own
(``master_cf`` lines, each a master.cf line or an ``  -o`` continuation) on ports from
``free_port()``, and passes them as ``listens`` so that the start waits until they accept
connections. ``main_cf`` lines are appended to main.cf, so a later setting wins.

As root, ``postfix -c DIR start`` needs no ``alternate_config_directories`` entry in the
default main.cf (that check is for unprivileged users), so /etc/postfix is left alone.
The start is checked: a Postfix that did not start (or a listener that did not come up)
fails the test with the maillog in the assertion message. At the end ``postfix -c DIR
stop`` runs and the fixture waits until every process of this instance has exited
(SIGKILL after a deadline), then removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
DEADLINE = 30.0

BASE_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
filedrop  unix  -       n       n       -       -       pipe
  flags=R user=nobody argv=/usr/bin/tee {mail}/${{queue_id}}.${{recipient}}
"""


def require_postfix() -> str:
    """The ``postfix`` command; skip the test if Postfix is not installed."""
    found = shutil.which("postfix") or shutil.which("postfix", path=os.pathsep.join(SBIN_DIRS))
    if found is None:
        pytest.skip("postfix is not installed (CI installs the Debian package postfix)")
    if os.geteuid() != 0:
        pytest.skip("starting a Postfix instance needs root")
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        pytest.skip("no user postfix (the postfix package creates it)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class PostfixSetup:
    """One running Postfix instance (see the module docstring for its layout)."""

    def __init__(self, root: Path, name: str, postfix: str) -> None:
        self.root = root
        self.name = name  # its myhostname is NAME.invalid, its syslog_name NAME
        self.postfix = postfix
        self.config_dir = root / "conf"
        self.queue_dir = root / "queue"
        self.maillog = root / "maillog"
        self.mail_dir = root / "mail"

    def log(self) -> str:
        """The maillog so far ("" if there is none yet)."""
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c CONF ARGS`` (or another Postfix tool given as a full path)."""
        result = subprocess.run(
            [self.postfix, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        if check:
            assert result.returncode == 0, (
                f"postfix {' '.join(args)} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}\n--- maillog:\n{self.log()}"
            )
        return result

    def delivered(self) -> list[Path]:
        """The delivered message files (one per recipient), oldest first."""
        return sorted(self.mail_dir.iterdir(), key=lambda p: (p.stat().st_mtime, p.name))

    def wait_for_delivery(self, count: int, timeout: float = DEADLINE) -> list[Path]:
        """Wait until at least ``count`` files were delivered, whole; fail with the maillog.

        The filedrop transport's `tee` makes a file before it writes it: a file counts
        once it is not empty and its size held for one poll."""
        deadline = time.monotonic() + timeout
        sizes: list[int] = []
        while True:
            files = self.delivered()
            now = [self._size(path) for path in files]
            if len(files) >= count and all(now) and now == sizes:
                return files
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(files)} of {count} messages delivered after {timeout}s\n"
                    f"--- maillog:\n{self.log()}"
                )
            sizes = now
            time.sleep(0.1)

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def pids(self) -> list[int]:
        """Live processes of this instance (they carry MAIL_CONFIG=its config dir)."""
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in environ and state != "Z":
                found.append(int(entry.name))
        return found


def _write_config(setup: PostfixSetup, main_cf: Sequence[str], master_cf: Sequence[str]) -> None:
    for directory in (setup.config_dir, setup.queue_dir, setup.root / "data", setup.mail_dir):
        directory.mkdir()
    postfix_user = pwd.getpwnam("postfix")
    os.chown(setup.root / "data", postfix_user.pw_uid, postfix_user.pw_gid)
    setup.mail_dir.chmod(0o1777)  # the filedrop pipe runs as nobody
    main = [
        "compatibility_level = 3.6",
        f"queue_directory = {setup.queue_dir}",
        f"data_directory = {setup.root / 'data'}",
        f"myhostname = {setup.name}.invalid",
        f"syslog_name = {setup.name}",
        f"maillog_file = {setup.maillog}",
        f"maillog_file_prefixes = {setup.root}",
        "inet_interfaces = 127.0.0.1",
        "inet_protocols = ipv4",
        "mynetworks = 127.0.0.0/8",
        "mydestination =",
        "relay_domains =",
        "alias_maps =",
        "alias_database =",
        "smtpd_relay_restrictions = permit_mynetworks, reject",
        "default_transport = filedrop",
        "relay_transport = filedrop",
        "local_transport = filedrop",
        "filedrop_destination_recipient_limit = 1",
        "smtp_dns_support_level = disabled",
        "smtp_host_lookup = native",
        "smtpd_peername_lookup = no",
        "biff = no",
        "bounce_queue_lifetime = 0",
        "maximal_queue_lifetime = 0",
        *main_cf,
    ]
    (setup.config_dir / "main.cf").write_text("\n".join(main) + "\n")
    master = BASE_MASTER_CF.format(mail=setup.mail_dir) + "".join(f"{line}\n" for line in master_cf)
    (setup.config_dir / "master.cf").write_text(master)


def _stop(setup: PostfixSetup) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        setup.command("stop", check=False)
    deadline = time.monotonic() + DEADLINE
    while pids := setup.pids():
        if time.monotonic() > deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + DEADLINE
        time.sleep(0.1)


@contextlib.contextmanager
def running_postfix(
    *,
    main_cf: Sequence[str] = (),
    master_cf: Sequence[str] = (),
    listens: Sequence[int] = (),
) -> Iterator[PostfixSetup]:
    """Start a Postfix instance with these extra lines; stop it and remove its files after."""
    postfix = require_postfix()
    name = f"pftest-{uuid.uuid4().hex[:10]}"
    root = Path(tempfile.mkdtemp(prefix=f"{name}."))
    root.chmod(0o755)
    setup = PostfixSetup(root, name, postfix)
    try:
        _write_config(setup, main_cf, master_cf)
        setup.command("check")
        try:
            setup.command("start")
            deadline = time.monotonic() + DEADLINE
            while not all(_accepts(port) for port in listens):
                if time.monotonic() > deadline or not setup.pids():
                    raise AssertionError(
                        f"Postfix did not listen on {list(listens)}\n--- maillog:\n{setup.log()}"
                    )
                time.sleep(0.05)
            yield setup
        finally:
            _stop(setup)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postfix_starter() -> Iterator[Callable[..., PostfixSetup]]:
    """``start(main_cf=[...], master_cf=[...], listens=[...])``: running_postfix as a fixture."""
    with contextlib.ExitStack() as stack:

        def start(
            *,
            main_cf: Sequence[str] = (),
            master_cf: Sequence[str] = (),
            listens: Sequence[int] = (),
        ) -> PostfixSetup:
            return stack.enter_context(
                running_postfix(main_cf=main_cf, master_cf=master_cf, listens=listens)
            )

        yield start
