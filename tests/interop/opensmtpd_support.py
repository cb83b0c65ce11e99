"""OpenSMTPD 6.8 for the interoperability tests (the shared helpers are in mta_support.py).

OpenSMTPD keeps its queue in a compiled-in directory, /var/spool/smtpd (no option or
``-D`` moves it), and its control socket in /var/run/smtpd.sock: one instance at a time.
The spool is created by smtpd itself with the owners it needs when missing; the fixture
refuses to start when it already exists (someone else's OpenSMTPD) and removes it after.
Its listener has no TLS: this build fails every server-side handshake (see
``rsa_certificate``); as a client it does STARTTLS.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from mta_support import DEADLINE, free_port, private_copy, require_mta, stop, wait_accepting

from trio_proxsmtp.testing.certs import TestCertificates

OPENSMTPD_SPOOL = Path("/var/spool/smtpd")
OPENSMTPD_SOCKET = Path("/var/run/smtpd.sock")


def rsa_certificate(certs: TestCertificates, directory: Path) -> tuple[Path, Path]:
    """An RSA server certificate for localhost/127.0.0.1 signed by the test CA: OpenSMTPD
    6.8 fails every handshake with the CA's ECDSA keys under OpenSSL 3 ("EVP lib")."""
    openssl = shutil.which("openssl")
    assert openssl is not None
    ca_key = certs.ca.with_name("ca.key")
    cert, key, csr, ext = (directory / f"rsa{s}" for s in (".pem", ".key", ".csr", ".ext"))
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    request = ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"]
    sign = ["x509", "-req", "-in", str(csr), "-CA", str(certs.ca), "-CAkey", str(ca_key)]
    sign += ["-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert)]
    for argv in ([*request, "-keyout", str(key), "-out", str(csr)], sign):
        subprocess.run([openssl, *argv], capture_output=True, check=True, timeout=DEADLINE)
    key.chmod(0o600)
    return cert, key


OPENSMTPD_CONF = """\
pki localhost cert "{certificate}"
pki localhost key "{key}"
smtp max-message-size 10M
table refused {{ "refuse-rcpt@next.test", "refuse-rcpt@proxy.test" }}
table dotrefused {{ "refuse-dot@opensmtpd.test" }}
filter "refuse_rcpt" phase rcpt-to match rcpt-to <refused> \\
    reject "550 refused at RCPT by opensmtpd"
filter "refuse_dot" phase commit match mail-from <dotrefused> \\
    reject "550 refused at the final dot by opensmtpd"
filter "refusals" chain {{ "refuse_rcpt", "refuse_dot" }}
listen on 127.0.0.1 port {port} hostname opensmtpd.test tag IN filter "refusals"
listen on 127.0.0.1 port {submission_port} hostname opensmtpd.test tag OUT
action "onward" relay host smtp+notls://127.0.0.1:{sink_port}
action "via_proxy" relay host {proxy_url}{proxy_tls}
match tag OUT from any for domain "proxy.test" action "via_proxy"
match tag IN from any for any action "onward"
match from local for any action "onward"
"""


class OpenSMTPD:
    """One smtpd: ``port`` receives (next server role, relays to ``sink_port``),
    ``submission_port`` takes mail that it relays through the proxy (client role)."""

    def __init__(self, binary: Path, root: Path, port: int, submission_port: int) -> None:
        self.binary = binary
        self.root = root
        self.port = port
        self.submission_port = submission_port
        self.log = root / "smtpd.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def smtpctl(self, *args: str) -> str:
        ctl = self.binary.parent / "smtpctl"
        result = subprocess.run(
            [str(ctl), *args], capture_output=True, text=True, timeout=DEADLINE, check=False
        )
        return result.stdout + result.stderr


@contextlib.contextmanager
def running_opensmtpd(
    certs: TestCertificates,
    *,
    sink_port: int,
    proxy_url: str = "smtp+notls://127.0.0.1:9",
    proxy_tls: str = "",
    port: int | None = None,
    extra: Sequence[str] = (),
) -> Iterator[OpenSMTPD]:
    binary = require_mta("smtpd", "opensmtpd", "opensmtpq")
    if OPENSMTPD_SPOOL.exists() or OPENSMTPD_SOCKET.exists():
        raise AssertionError(
            f"{OPENSMTPD_SPOOL} or {OPENSMTPD_SOCKET} exists: another OpenSMTPD is running "
            "(its queue and control socket are compiled in; only one may run)"
        )
    root = Path(tempfile.mkdtemp(prefix="interop-opensmtpd."))
    root.chmod(0o755)
    try:
        ca, _, _ = private_copy(certs, root / "tls", "root")
        certificate, key = rsa_certificate(certs, root / "tls")
        smtpd = OpenSMTPD(binary, root, port or free_port(), free_port())
        config = root / "smtpd.conf"
        text = OPENSMTPD_CONF.format(
            certificate=certificate,
            key=key,
            ca=ca,
            port=smtpd.port,
            submission_port=smtpd.submission_port,
            sink_port=sink_port,
            proxy_url=proxy_url,
            proxy_tls=proxy_tls,
        )
        config.write_text(text + "".join(f"{line}\n" for line in extra))
        config.chmod(0o600)
        process = subprocess.Popen(
            [str(binary), "-d", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=smtpd.log.open("wb"),
            start_new_session=True,
        )
        try:
            wait_accepting(smtpd.port, process, smtpd.log)
            wait_accepting(smtpd.submission_port, process, smtpd.log)
            yield smtpd
        finally:
            stop(process)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(OPENSMTPD_SPOOL, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            OPENSMTPD_SOCKET.unlink()
