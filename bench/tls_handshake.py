"""The CPU of one TLS handshake, full and resumed: python bench/tls_handshake.py [--n 300]

Both ends in this process over memory BIOs (Python's ssl, as trio.SSLStream uses it), with
the certificates `trio_proxsmtp.testing.certs` makes (ECDSA P-256, as the tests use) and a
2048-bit RSA one: what a new TLS session costs the proxy on each side (the client side is
the proxy towards the next server with OutTLS; the server side is STARTTLS or ListenTLS
towards a client), and what resuming a session (``session=``, a ticket from the previous
connection) would save towards the next server.  No sockets: the figures are the ssl
library's work only, not the round trips.
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

from trio_proxsmtp.testing.certs import make_test_certificates


def handshakes(
    n: int, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext, resume: bool
) -> tuple[float, float, int]:
    """(client CPU s, server CPU s) per handshake, and how many were resumed."""
    session = None
    client_cpu = server_cpu = 0.0
    resumed = 0
    for _ in range(n):
        bios = [ssl.MemoryBIO() for _ in range(4)]
        client = client_ctx.wrap_bio(
            bios[0], bios[1], server_hostname="localhost", session=session if resume else None
        )
        server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
        c_in, c_out, s_in, s_out = bios
        state = {"c": False, "s": False}
        while not (state["c"] and state["s"]):
            for name, obj in (("c", client), ("s", server)):
                if state[name]:
                    continue
                t0 = time.process_time()
                try:
                    obj.do_handshake()
                    state[name] = True
                except ssl.SSLWantReadError:
                    pass
                spent = time.process_time() - t0
                if name == "c":
                    client_cpu += spent
                else:
                    server_cpu += spent
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        c_in.write(s_out.read())
        t0 = time.process_time()
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            client.read(1)  # TLS 1.3: the ticket arrives after the handshake
        client_cpu += time.process_time() - t0
        resumed += client.session_reused
        session = client.session
    return client_cpu / n, server_cpu / n, resumed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="proxsmtp-tls-") as tmp:
        certs = make_test_certificates(Path(tmp) / "ec")
        rsa_key, rsa_cert = Path(tmp) / "rsa.key", Path(tmp) / "rsa.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
             "-keyout", str(rsa_key), "-out", str(rsa_cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        keys = {
            "ECDSA P-256": (certs.certificate, certs.key, certs.ca),
            "RSA 2048": (rsa_cert, rsa_key, rsa_cert),
        }
        print(f"{'key':<12}{'TLS':>5}{'resumed':>9}{'client ms':>11}{'server ms':>11}{'both/s':>9}")
        for name, (cert, key, ca) in keys.items():
            for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
                server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                server_ctx.load_cert_chain(str(cert), str(key))
                client_ctx = ssl.create_default_context(cafile=str(ca))
                client_ctx.maximum_version = version
                for resume in (False, True):
                    c, s, resumed = handshakes(args.n, client_ctx, server_ctx, resume)
                    tls = version.name[-3:].replace("_", ".")
                    print(
                        f"{name:<12}{tls:>5}{resumed:>5}/{args.n:<3}"
                        f"{c * 1e3:11.3f}{s * 1e3:11.3f}{1 / (c + s):9.0f}"
                    )


if __name__ == "__main__":
    main()
