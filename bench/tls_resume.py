"""New TLS connections to the next server per second, full and resumed: python bench/tls_resume.py

What OutTLS: implicit costs the proxy per connection to the next server, with and without
TLS session resumption (relay/tls_sessions.py): the proxy's `Upstream` (in this process)
connects to haproxy terminating TLS in front of Postfix's smtp-sink (as ``bench/run.py
--only upstream``), reads the banner, says QUIT and closes, --n times per round; rounds
rotate between "plain" (OutTLS off, a plain haproxy front), "full" (no session offered) and
"resumed" (the last one offered).  Each
round gives connections per second (wall) and this process's CPU per connection (the
proxy's side only: haproxy and the sink are other processes).  One connection at a time:
the rate is the round trip and both ends' handshake work, the CPU our side alone.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import statistics
import tempfile
import time
from pathlib import Path

import trio
from run import Front  # bench/run.py: smtp-sink behind haproxy

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.settings import upstream_settings
from trio_proxsmtp.relay.client_info import ClientInfo
from trio_proxsmtp.relay.settings import UpstreamSettings
from trio_proxsmtp.relay.tls_sessions import TLSSessions
from trio_proxsmtp.relay.upstream import Outgoing, Upstream
from trio_proxsmtp.testing.certs import make_test_certificates

CLIENT = ClientInfo(client="127.0.0.1", local="127.0.0.1")


async def connections(settings: UpstreamSettings, n: int) -> tuple[float, float, int]:
    """(wall s, CPU s, resumed count) of `n` connections one after the other."""
    log = logging.LoggerAdapter(logging.getLogger("bench"))
    resumed = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        upstream = Upstream(settings, CLIENT, log)
        try:
            await upstream.connect()
            await upstream.exchange((), replies=1)
            if upstream.tls:
                resumed += bool(upstream.stream.session_reused)  # type: ignore[union-attr]
            await upstream.command(Outgoing(b"QUIT\r\n"))
        finally:
            await upstream.aclose()
    return time.perf_counter() - wall0, time.process_time() - cpu0, resumed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="connections per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, alternated")
    parser.add_argument("--tls12", action="store_true", help="our side offers TLS 1.2 only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="proxsmtp-resume-") as tmp:
        work = Path(tmp)
        certs = make_test_certificates(work / "certs")
        pem = work / "haproxy.pem"
        pem.write_bytes(certs.certificate.read_bytes() + certs.key.read_bytes())
        front = Front(work, pipelining=False, tls_pem=pem)
        plain_front = Front(work, pipelining=False, tls_pem=None)
        try:
            config = parse_config(
                f"OutAddress: 127.0.0.1:{front.port}\nOutTLS: implicit\n"
                f"OutTLSCAFile: {certs.ca}\nOutTLSServerName: localhost\n"
            )
            settings = upstream_settings(config)
            if args.tls12:
                assert settings.tls_context is not None
                settings.tls_context.maximum_version = ssl.TLSVersion.TLSv1_2
            plain = upstream_settings(parse_config(f"OutAddress: 127.0.0.1:{plain_front.port}\n"))
            offer = TLSSessions.get
            modes = ("plain", "full", "resumed")
            results: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in modes}
            trio.run(connections, settings, 20)  # warm-up (and a session to resume)
            for rnd in range(args.rounds):
                for mode in modes[rnd % 3 :] + modes[: rnd % 3]:
                    TLSSessions.get = (  # type: ignore[method-assign]
                        offer if mode == "resumed" else (lambda self, name, reached: None)
                    )
                    chosen = plain if mode == "plain" else settings
                    results[mode].append(trio.run(connections, chosen, args.n))
            TLSSessions.get = offer  # type: ignore[method-assign]
        finally:
            front.close()
            plain_front.close()
    version = "TLS 1.2" if args.tls12 else "TLS 1.3"
    print(f"{version}, {args.n} connections x {args.rounds} rounds each, rotated (medians)")
    base = statistics.median(args.n / wall for wall, _, _ in results["plain"])
    for mode, runs in results.items():
        rate = statistics.median(args.n / wall for wall, _, _ in runs)
        cpu = statistics.median(cpu / args.n for _, cpu, _ in runs) * 1e3
        reused = sum(r for _, _, r in runs)
        total = args.n * len(runs)
        print(
            f"  {mode:<8} {rate:7.0f} conn/s ({rate / base:4.2f}x plain)  {cpu:.3f} ms CPU/conn"
            f"  resumed {reused}/{total}"
        )


if __name__ == "__main__":
    main()
