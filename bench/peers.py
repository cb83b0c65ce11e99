"""The peers in our own benchmark (issue 26); python bench/peers.py [--quick].

One sitting, alternated: ours (Workers 1 and Workers auto), the C proxsmtpd 1.10, Haraka (npm
package ``Haraka`` as a forwarding relay: plugins ``relay`` with an ACL for 127.0.0.1,
``queue/smtp_forward`` to the sink, and a local plugin that answers the reverse-DNS hook
without DNS), aiosmtpd's ``Proxy`` handler, the bare Trio splice (bench/splice.py) and
smtp-source -> smtp-sink direct, under bench/run.py's load (smtp-source -d, 2048-byte
messages, no filter) at each level.  For each: messages/s at the sink, CPU ms per message
(utime + stime of the whole process tree over the window / messages counted at the sink),
p50/p99 of final dot -> reply for one more session sending one message at a time while the
load runs (from the warm-up on), and RSS and PSS of the tree; then ours (Workers 1) / peer for rate
and CPU.  The order of the levels and of the implementations alternates from round to
round; each figure is the median of the rounds.

Haraka and aiosmtpd are installed on first use, outside the repository, under
$PROXSMTP_BENCH_CACHE (default ~/.cache/trio_proxsmtp-bench): ``npm install Haraka`` there,
and a venv with ``pip install aiosmtpd``.  A peer that cannot be installed or started is
reported as such and left out.  Not part of the test suite (bench/ runs on demand).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import run  # bench/run.py, next to this file

HARAKA_VERSION = "3.3.4"
AIOSMTPD_VERSION = "1.4.6"
IMPLS = ("ours1", "ours", "C", "haraka", "aiosmtpd", "splice", "direct")
LABELS = {**run.LABELS, "haraka": "Haraka", "aiosmtpd": "aiosmtpd Proxy"}
AIOSMTPD_PROXY = """
import asyncio
from aiosmtpd.handlers import Proxy
from aiosmtpd.smtp import SMTP
loop = asyncio.new_event_loop()
handler = Proxy("{0}", {2})
loop.run_until_complete(loop.create_server(lambda: SMTP(handler), "{0}", {1}))
loop.run_forever()
"""
RDNS_PLUGIN = """// bench: the client's host name without DNS (the bench has no resolver to ask)
exports.hook_lookup_rdns = function (next, connection) {
    next(OK, 'localhost');
};
"""


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "trio_proxsmtp-bench"
    path = Path(os.environ.get("PROXSMTP_BENCH_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def haraka_bin() -> Path:
    """Haraka's launcher, installed with npm into the cache on first use."""
    home = cache_dir() / "haraka"
    launcher = home / "node_modules" / "Haraka" / "bin" / "haraka"
    if not launcher.exists():
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            raise RuntimeError("node and npm are needed for Haraka (apt-get install npm)")
        home.mkdir(exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(home), "--no-audit", "--no-fund",
             f"Haraka@{HARAKA_VERSION}"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return launcher


def aiosmtpd_python() -> Path:
    """A venv's python with aiosmtpd, made in the cache on first use."""
    venv = cache_dir() / "venv-aiosmtpd"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(python), "-c", "import aiosmtpd"], capture_output=True)
    if probe.returncode:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"aiosmtpd=={AIOSMTPD_VERSION}"],
            check=True,
        )
    return python


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Haraka's or our workers, C's is one process)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents.setdefault(int(run.proc_stat(int(entry))[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += parents.get(p, [])
    return found


class Peer:
    """A proxy of any kind in the foreground: its port, its process tree, its end."""

    def __init__(self, impl: str, workdir: Path, upstream: int, sessions: int) -> None:
        self.impl = impl
        self._proxy: run.Proxy | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        if impl in ("ours1", "ours", "C", "splice"):
            self._proxy = run.Proxy(impl, workdir, upstream, "", max_conn=2 * sessions + 100)
            self.port, self.proc = self._proxy.port, self._proxy.proc
            return
        if impl == "direct":
            self.port = upstream
            return
        self.port = run.free_port()
        if impl == "haraka":
            cmd = [str(haraka_bin()), "-c", str(self._haraka_config(workdir, upstream))]
        else:  # (its command line passes no arguments to the Proxy handler)
            code = AIOSMTPD_PROXY.format(run.HOST, self.port, upstream)
            cmd = [str(aiosmtpd_python()), "-c", code]
        self.log = workdir / f"{impl}-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        run.wait_listening(self.port, self.proc, timeout=30.0)

    def _haraka_config(self, workdir: Path, upstream: int) -> Path:
        home = workdir / f"haraka-{self.port}"
        # Its own defaults first (connection.ini and the like are not read without them).
        shutil.copytree(haraka_bin().parent.parent / "config", home / "config")
        (home / "plugins").mkdir()
        (home / "plugins" / "bench_rdns.js").write_text(RDNS_PLUGIN)
        config = {
            "smtp.ini": f"listen={run.HOST}:{self.port}\n",
            "plugins": "bench_rdns\nrelay\nqueue/smtp_forward\n",
            "relay.ini": "[relay]\nacl=true\n",
            "relay_acl_allow": "127.0.0.1/32\n",
            "smtp_forward.ini": f"host={run.HOST}\nport={upstream}\nenable_outbound=true\n",
            "log.ini": "[main]\nlevel=warn\n",
            "me": "bench.example\n",
            "databytes": "50000000\n",
        }
        for name, text in config.items():
            (home / "config" / name).write_text(text)
        return home

    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc is not None else []

    def cpu_seconds(self) -> float:
        return run.cpu_of(self.pids())

    def memory_kb(self) -> tuple[int, int]:
        """(RSS, PSS) of the tree in kB.  RSS counts the pages a forked worker shares with
        its supervisor once in each; PSS splits every shared page among its sharers, so
        it adds up across processes."""
        rss = pss = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, KeyError):
                rss += run.proc_kb(pid, "VmRSS")
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    pss += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        return rss, pss

    def died(self) -> str:
        if self._proxy is not None:
            return self._proxy.death()
        if self.proc is not None and self.proc.poll() is not None:
            return f"exit {self.proc.returncode}"
        return ""

    def close(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
        elif self.proc is not None:
            run.stop(self.proc)


@contextlib.contextmanager
def probe(port: int, into: list[float], failed: list[str]) -> Iterator[None]:
    """One more session, one message at a time, while the load runs: final dot -> reply
    (what went wrong, if it did, in `failed`)."""
    stop = threading.Event()

    def go() -> None:
        try:
            client = run.Client(port, timeout=30.0)
            client.command(b"EHLO probe.example", b"250")
            body = run.text(run.MSG_SIZE)
            while True:  # one message at least, however long the set-up took
                into.append(client.message(lambda s: s.sendall(body)))
                if stop.is_set():
                    break
            client.close()
        except (OSError, RuntimeError) as exc:  # (ConnectionError is an OSError)
            failed.append(f"{type(exc).__name__}: {exc}"[:60])

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(35)


@dataclass
class Figures:
    rate: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    pss: list[float] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    died: str = ""
    probe: list[str] = field(default_factory=list)  # the latency probe's failures


def measure(impl: str, level: int, warmup: float, window: float, into: Figures) -> None:
    with tempfile.TemporaryDirectory(prefix="proxsmtp-peers-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        sink = run.Sink(workdir)
        peer = Peer(impl, workdir, sink.port, level)
        latencies: list[float] = []
        try:
            with run.load(peer.port, level), probe(peer.port, latencies, into.probe):
                time.sleep(warmup)  # (the probe's session is set up meanwhile)
                cpu0, c0, t0 = peer.cpu_seconds(), sink.count(), time.monotonic()
                time.sleep(window)
                cpu1, c1, t1 = peer.cpu_seconds(), sink.count(), time.monotonic()
                rss, pss = peer.memory_kb()
            died = peer.died()
        finally:
            peer.close()
            sink.close()
    messages = c1 - c0  # the probe's too: the proxy relayed them
    if died:
        into.died = died
    into.rate.append(messages / (t1 - t0))
    into.cpu.append((cpu1 - cpu0) * 1e3 / messages if messages > 0 else 0.0)
    into.rss.append(rss / 1024)
    into.pss.append(pss / 1024)
    into.lat += latencies


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(results: dict[int, dict[str, Figures]], impls: list[str]) -> str:
    head = f"{'impl':<15}{'msg/s':>8}{'CPU ms/msg':>12}{'p50 ms':>9}{'p99 ms':>9}"
    head += f"{'RSS MB':>8}{'PSS MB':>8}"
    head += f"{'W1/peer rate':>14}{'W1/peer CPU':>13}"
    out: list[str] = []
    for level, by_impl in sorted(results.items()):
        out += ["", f"{level} sessions:", head]
        ours = by_impl.get("ours1")
        for impl in impls:
            f = by_impl[impl]
            rate, cpu = med(f.rate), med(f.cpu)
            lat = (
                f"{run.pct(f.lat, 0.5) * 1e3:9.2f}{run.pct(f.lat, 0.99) * 1e3:9.2f}"
                if f.lat
                else f"{'-':>9}{'-':>9}"
            )
            own = f"{cpu:12.3f}{med(f.rss):8.1f}{med(f.pss):8.1f}"
            if impl == "direct":
                own = f"{'-':>12}{'-':>8}{'-':>8}"
            line = f"{LABELS[impl]:<15}{rate:8.0f}{own[:12]}{lat}{own[12:]}"
            if ours is not None and impl != "ours1" and rate and cpu:
                line += f"{med(ours.rate) / rate:13.2f}x{med(ours.cpu) / cpu:12.2f}x"
            if f.died:
                line += f"  DIED: {f.died}"
            elif not f.lat and f.probe:
                line += f"  (latency probe: {f.probe[-1]})"
            out.append(line)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, short windows")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--levels", default="10,50,200,500")
    parser.add_argument("--impl", action="append", choices=IMPLS, help="only these (repeat)")
    parser.add_argument("--size", type=int, default=run.MSG_SIZE, help="message bytes")
    args = parser.parse_args()
    run.MSG_SIZE = args.size  # smtp-source -l, and the probe's message
    rounds = args.rounds or (1 if args.quick else 3)
    warmup, window = (0.8, 1.5) if args.quick else (1.5, 3.0)
    levels = [int(x) for x in args.levels.split(",")]
    run.raise_nofile(run.NOFILE)
    impls = list(args.impl or IMPLS)
    for impl, install in (("haraka", haraka_bin), ("aiosmtpd", aiosmtpd_python)):
        if impl in impls:
            try:
                install()
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                print(f"[skip] {impl}: {exc}")
                impls.remove(impl)
    if "C" in impls and run.C_PROXY is None:
        print("[skip] C: /usr/sbin/proxsmtpd not found (apt-get install proxsmtp)")
        impls.remove("C")
    results = {level: {impl: Figures() for impl in impls} for level in levels}
    started = time.monotonic()
    print(
        f"peers, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {rounds} round(s), "
        f"{warmup:g} s warm-up, {window:g} s window, {run.MSG_SIZE}-byte messages, no filter; "
        f"{os.cpu_count()} cores, load average {Path('/proc/loadavg').read_text().split()[0]}",
        flush=True,
    )
    for i in range(rounds):
        for level in levels if i % 2 == 0 else levels[::-1]:
            for impl in impls if i % 2 == 0 else impls[::-1]:
                try:
                    measure(impl, level, warmup, window, results[level][impl])
                except (RuntimeError, OSError) as exc:
                    results[level][impl].died = str(exc)[:80]
                print(".", end="", flush=True)
    print(f"\n{report(results, impls)}")
    if run.MSG_SIZE >= 65536:
        print(f"\nMB/s ({run.MSG_SIZE}-byte messages):")
        for level, by_impl in sorted(results.items()):
            cells = [
                f"{LABELS[i]} {med(f.rate) * run.MSG_SIZE / 1e6:.0f}" for i, f in by_impl.items()
            ]
            print(f"  {level} sessions: " + ", ".join(cells))
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
