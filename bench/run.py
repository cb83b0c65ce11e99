"""Benchmark trio_proxsmtp against the C proxsmtpd 1.10 (issue 7); run: python bench/run.py.

Load is Postfix's smtp-source, the upstream is Postfix's smtp-sink, and messages/s are counted
at the sink (its running ``-c`` counter, sampled over a steady-state window after a warm-up),
so connection set-up and tear-down do not blur the rate.  Ours and C run alternately (A B A B)
for every scenario and round, each with a fresh proxy and sink, and the ratio is the median of
the per-round ratios.  Latency (final dot -> reply) comes from a small blocking client that
sends messages one at a time on one session against an otherwise idle proxy.  Everything
(load generator, proxy, sink, filters) shares this machine's cores: the numbers are relative.

Standard library only, plus the package under test.  ``--quick`` gives a ~1 minute version.
``--only upstream`` runs the issue 11 scenarios (ours only, through haproxy): the plain
lock-step run, PIPELINING towards the next server and TLS towards it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
SINK = shutil.which("smtp-sink", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
SOURCE = shutil.which("smtp-source", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
C_PROXY = shutil.which("proxsmtpd", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
REPO = Path(__file__).resolve().parent.parent
IMPLS = ("ours", "C")
SCENARIOS: dict[str, str] = {
    "no filter": "",
    "cat": "FilterCommand: cat\n",
    "file+true": "FilterType: file\nFilterCommand: true\n",
}
# Ours only (C has no milters), compared with C's `cat`; the milters run for the whole
# benchmark (see start_milters) and {accept}/{dkim} become their addresses.
MILTER_SCENARIOS: dict[str, str] = {
    "milter": "Milters: {accept}\n",
    "dkim sign": "Milters: {dkim}\n",
}
SESSIONS_PER_SOURCE = 5  # the C proxy's listen backlog is 5: start sessions in fives
STAGGER = 0.02  # seconds between two smtp-source processes
MSG_SIZE = 2048
C_IDLE = 500


@dataclass
class Settings:
    rounds: int
    sessions: int
    warmup: float
    window: float
    latency_budget: float
    latency_max: int
    levels: tuple[int, ...]
    big_mb: int
    idle: int


FULL = Settings(3, 10, 1.0, 3.0, 2.0, 300, (10, 50, 200), 50, 5000)
QUICK = Settings(3, 10, 0.3, 0.6, 0.3, 100, (10, 50, 200), 50, 5000)


# ---------------------------------------------------------------- processes and /proc


def free_port() -> int:
    """A loopback port free right now (a race with other programs is possible but unlikely)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether 127.0.0.1:port is in LISTEN state, without connecting (which C would relay)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(
            line.split()[1] == want and line.split()[3] == "0A" for line in f.readlines()[1:]
        )


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} is not listening on {port}")
        time.sleep(0.01)


def proc_kb(pid: int, key: str) -> int:
    """A field of /proc/PID/status in kB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop one process we started, by its pid, escalating to SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Sink:
    """smtp-sink with its running counter (``sess=.. quit=.. mesg=N`` + CR) in a file."""

    def __init__(self, workdir: Path, backlog: int = 1024) -> None:
        self.port = free_port()
        self.out = workdir / f"sink-{self.port}.out"
        cmd = [str(SINK), "-c", f"{HOST}:{self.port}", str(backlog)]
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", "nobody"]
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        wait_listening(self.port, self.proc)

    def count(self) -> int:
        with open(self.out, "rb") as f:
            f.seek(max(0, self.out.stat().st_size - 256))
            found = re.findall(rb"mesg=(\d+)\r", f.read())
        return int(found[-1]) if found else 0

    def close(self) -> None:
        stop(self.proc)
        self.out.unlink(missing_ok=True)


OUR_WORKERS = 1  # --workers


class Proxy:
    """Our proxy or the C proxsmtpd, in the foreground, with a config made for this run."""

    def __init__(
        self, impl: str, workdir: Path, upstream: int, extra: str, max_conn: int = 256
    ) -> None:
        self.impl = impl
        self.port = free_port()
        self.conf = workdir / f"{impl}-{self.port}.conf"
        if impl == "ours" and OUR_WORKERS > 1:
            extra += f"Workers: {OUR_WORKERS}\n"  # our extension; C has no such option
        self.conf.write_text(
            f"Listen: {HOST}:{self.port}\nOutAddress: {HOST}:{upstream}\n"
            f"TempDirectory: {workdir}\nMaxConnections: {max_conn}\n{extra}"
        )
        if impl == "ours":
            cmd = [sys.executable, "-m", "trio_proxsmtp", "-d", "0", "-f", str(self.conf)]
        else:
            cmd = [str(C_PROXY), "-d", "0", "-f", str(self.conf)]
        self.log = workdir / f"{impl}-{self.port}.log"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir
            )
        wait_listening(self.port, self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        stop(self.proc)
        self.conf.unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)


@contextlib.contextmanager
def load(port: int, sessions: int) -> Iterator[None]:
    """smtp-source sessions that keep sending (-d: many messages per session), started in
    groups of SESSIONS_PER_SOURCE so that a listen backlog of 5 does not drop SYNs."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        left = sessions
        while left > 0:
            n = min(SESSIONS_PER_SOURCE, left)
            left -= n
            cmd = [str(SOURCE), "-d", "-s", str(n), "-m", "100000000", "-l", str(MSG_SIZE)]
            cmd += ["-f", "from@example.org", "-t", "to@example.net", f"{HOST}:{port}"]
            procs.append(
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
            time.sleep(STAGGER)
        yield
    finally:
        for p in procs:
            stop(p, signal.SIGKILL)


def rate_at_sink(sink: Sink, warmup: float, window: float) -> float:
    time.sleep(warmup)
    c0, t0 = sink.count(), time.monotonic()
    time.sleep(window)
    c1, t1 = sink.count(), time.monotonic()
    return (c1 - c0) / (t1 - t0)


@contextlib.contextmanager
def start_milters(workdir: Path) -> Iterator[dict[str, str]]:
    """bench/accept_milter.py and OpenDKIM signing (a key made now) on free ports."""
    procs: list[subprocess.Popen[bytes]] = []
    addresses: dict[str, str] = {}
    try:
        port = free_port()
        accept = [sys.executable, str(Path(__file__).with_name("accept_milter.py")), str(port)]
        procs.append(subprocess.Popen(accept))
        wait_listening(port, procs[-1])
        addresses["accept"] = f"inet:{HOST}:{port}"
        opendkim = shutil.which("opendkim", path="/usr/sbin:" + os.environ.get("PATH", ""))
        genkey = shutil.which("opendkim-genkey", path="/usr/sbin:" + os.environ.get("PATH", ""))
        if opendkim and genkey:
            keys = workdir / "dkim"
            keys.mkdir()
            subprocess.run([genkey, "-b", "2048", "-d", "example.org", "-s", "bench", "-D",
                            str(keys)], check=True)  # fmt: skip
            port = free_port()
            conf = keys / "opendkim.conf"
            conf.write_text(
                f"Mode s\nSocket inet:{port}@{HOST}\nDomain example.org\nSelector bench\n"
                f"KeyFile {keys / 'bench.private'}\nCanonicalization relaxed/simple\n"
                f"Syslog no\nUserID root\nRequireSafeKeys no\nPidFile {keys / 'pid'}\n"
            )
            procs.append(subprocess.Popen([opendkim, "-f", "-x", str(conf)]))
            wait_listening(port, procs[-1])
            addresses["dkim"] = f"inet:{HOST}:{port}"
        yield addresses
    finally:
        for proc in procs:
            stop(proc)


# ---------------------------------------------------------------- a small blocking client


class Client:
    """One SMTP session, one command at a time, TCP_NODELAY."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")
        self.expect(b"220")

    def reply(self) -> bytes:
        while True:
            line = self.rfile.readline()
            if not line:
                raise ConnectionError("connection closed")
            if line[3:4] != b"-":
                return line

    def expect(self, code: bytes) -> None:
        line = self.reply()
        if not line.startswith(code):
            raise RuntimeError(f"expected {code!r}, got {line!r}")

    def command(self, line: bytes, code: bytes) -> None:
        self.sock.sendall(line + b"\r\n")
        self.expect(code)

    def message(self, body: Callable[[socket.socket], None]) -> float:
        """Send one message; return seconds from the final dot to its 250."""
        self.command(b"MAIL FROM:<from@example.org>", b"250")
        self.command(b"RCPT TO:<to@example.net>", b"250")
        self.command(b"DATA", b"354")
        body(self.sock)
        t0 = time.perf_counter()
        self.sock.sendall(b".\r\n")
        self.expect(b"250")
        return time.perf_counter() - t0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"QUIT\r\n")
            self.reply()
        self.rfile.close()
        self.sock.close()


def text(size: int) -> bytes:
    """About `size` bytes of mail: headers, then 76-character lines, CRLF-terminated."""
    head = b"From: from@example.org\r\nTo: to@example.net\r\nSubject: bench\r\n\r\n"
    line = b"x" * 74 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def latencies(port: int, budget: float, most: int) -> list[float]:
    client = Client(port)
    client.command(b"EHLO bench.example", b"250")
    body = text(MSG_SIZE)
    out: list[float] = []
    end = time.monotonic() + budget
    while len(out) < most and time.monotonic() < end:
        out.append(client.message(lambda s: s.sendall(body)))
    client.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------- the measurements


@dataclass
class Run:
    rate: float
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    samples: int = 0
    hwm_kb: int = 0


@dataclass
class Results:
    settings: Settings
    runs: dict[str, dict[str, list[Run]]] = field(default_factory=dict)
    levels: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # every round
    big: dict[str, dict[str, float]] = field(default_factory=dict)
    idle: dict[str, dict[str, float]] = field(default_factory=dict)


def one_run(
    impl: str, workdir: Path, extra: str, s: Settings, sessions: int, latency: bool = True
) -> Run:
    sink = Sink(workdir)
    if impl == "direct":
        try:
            with load(sink.port, sessions):
                return Run(rate_at_sink(sink, s.warmup, s.window))
        finally:
            sink.close()
    proxy = Proxy(impl, workdir, sink.port, extra)
    try:
        with load(proxy.port, sessions):
            rate = rate_at_sink(sink, s.warmup, s.window)
        if not latency:
            return Run(rate, hwm_kb=proc_kb(proxy.pid, "VmHWM"))
        lat = latencies(proxy.port, s.latency_budget, s.latency_max)
        return Run(
            rate,
            pct(lat, 0.5) * 1e3,
            pct(lat, 0.99) * 1e3,
            len(lat),
            proc_kb(proxy.pid, "VmHWM"),
        )
    finally:
        proxy.close()
        sink.close()


def big_message(impl: str, workdir: Path, megabytes: int) -> dict[str, float]:
    """RSS growth of the proxy while one large message passes through `cat`."""
    sink = Sink(workdir)
    proxy = Proxy(impl, workdir, sink.port, "FilterCommand: cat\nFilterTimeout: 120\n")
    try:
        client = Client(proxy.port, timeout=180)
        client.command(b"EHLO bench.example", b"250")
        client.message(lambda sock: sock.sendall(text(MSG_SIZE)))  # warm up the code paths
        time.sleep(0.2)
        base = proc_kb(proxy.pid, "VmRSS")
        peak = base
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.005):
                with contextlib.suppress(OSError, KeyError):
                    peak = max(peak, proc_kb(proxy.pid, "VmRSS"))

        block = text(1 << 20)

        def body(sock: socket.socket) -> None:
            for _ in range(megabytes):
                sock.sendall(block)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        try:
            client.message(body)
        finally:
            done.set()
            sampler.join()
        seconds = time.perf_counter() - t0
        client.close()
        return {"base_kb": base, "growth_kb": peak - base, "seconds": seconds}
    finally:
        proxy.close()
        sink.close()


class Greeter:
    """An upstream that greets and then holds each connection silently (smtp-sink stops
    accepting at about 256 concurrent sessions, too few for the idle-session test)."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0), backlog=4096)
        self.port = int(self.listener.getsockname()[1])
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.held.append(conn)
                conn.sendall(b"220 greeter ESMTP\r\n")

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)
        for conn in self.held:
            conn.close()


def idle_sessions(impl: str, workdir: Path, count: int) -> dict[str, float]:
    """Proxy RSS per idle session: `count` clients that got the greeting and say nothing."""
    raise_nofile(2 * count + 256)
    upstream = Greeter()
    proxy = Proxy(impl, workdir, upstream.port, "", max_conn=count + 100)
    socks: list[socket.socket] = []
    try:
        for _ in range(5):  # warm up (the greeter never answers QUIT: just hang up)
            with socket.create_connection((HOST, proxy.port), timeout=30) as sock:
                sock.recv(512)
        time.sleep(0.3)
        base = proc_kb(proxy.pid, "VmRSS")
        t0 = time.perf_counter()
        while len(socks) < count:
            batch = [
                socket.create_connection((HOST, proxy.port), timeout=30)
                for _ in range(min(SESSIONS_PER_SOURCE, count - len(socks)))
            ]
            socks += batch
            for sock in batch:  # the greeting proves the session is relayed end to end
                if not sock.recv(512).startswith(b"220"):
                    raise RuntimeError("no greeting")
        opened = time.perf_counter() - t0
        time.sleep(0.5)
        rss = proc_kb(proxy.pid, "VmRSS")
        return {
            "sessions": len(socks),
            "base_kb": base,
            "rss_kb": rss,
            "per_session_kb": (rss - base) / len(socks),
            "open_seconds": opened,
        }
    finally:
        for sock in socks:
            sock.close()
        proxy.close()
        upstream.close()


def median_ratio(runs: dict[str, list[Run]], c_runs: list[Run] | None = None) -> float:
    """Ours over C, round by round (`c_runs`: C's runs of another scenario, e.g. `cat`)."""
    theirs = runs["C"] if c_runs is None else c_runs
    return statistics.median(o.rate / c.rate for o, c in zip(runs["ours"], theirs, strict=True))


# ---------------------------------------------------------------- report


def report(r: Results, elapsed: float) -> str:
    s = r.settings
    out = [
        f"trio_proxsmtp vs C proxsmtpd 1.10 — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores (shared by load, "
        f"proxy, sink, filters); Linux {platform.release()}; Python {platform.python_version()}",
        f"{s.rounds} rounds A/B alternated; {s.sessions} sessions, {MSG_SIZE}-byte messages; "
        f"rate = sink count over {s.window:g} s after {s.warmup:g} s warm-up; "
        f"latency = final dot -> reply, one idle session",
        f"ours: Workers {OUR_WORKERS} (peak RSS is the first process only)"
        if OUR_WORKERS > 1
        else "ours: one process (Workers 1), the same config as C",
        "",
        f"{'scenario':<11} {'impl':<6} {'msg/s (rounds)':<26} {'median':>8} {'ours/C':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'n':>4} {'peak RSS':>9}",
    ]
    for name, runs in r.runs.items():
        for impl, rs in runs.items():
            rates = " ".join(f"{x.rate:.0f}" for x in rs)
            med = statistics.median(x.rate for x in rs)
            ratio = f"{median_ratio(runs):.2f}" if impl == "ours" and "C" in runs else ""
            if name in MILTER_SCENARIOS and "cat" in r.runs:
                ratio = f"{median_ratio(runs, r.runs['cat']['C']):.2f}c"  # vs C's cat
            if impl == "direct":
                out.append(f"{name:<11} {impl:<6} {rates:<26} {med:>8.0f}")
                continue
            p50 = statistics.median(x.p50_ms for x in rs)
            p99 = statistics.median(x.p99_ms for x in rs)
            n = min(x.samples for x in rs)
            hwm = max(x.hwm_kb for x in rs) / 1024
            out.append(
                f"{name:<11} {impl:<6} {rates:<26} {med:>8.0f} {ratio:>7} {p50:>7.2f} "
                f"{p99:>7.2f} {n:>4} {hwm:>7.1f}MB"
            )
    out += ["", "concurrent sessions (no filter), msg/s, median of the rounds (the rounds):"]
    for impl, lv in r.levels.items():
        cells = "  ".join(
            f"{k:>3}: {statistics.median(v):>5.0f} ({' '.join(f'{x:.0f}' for x in v)})"
            for k, v in sorted(lv.items())
        )
        out.append(f"  {impl:<5} {cells}")
    out += ["", f"one {s.big_mb} MB message through `cat`:"]
    for impl, b in r.big.items():
        out.append(
            f"  {impl:<5} RSS {b['base_kb'] / 1024:.1f} MB before, growth "
            f"{b['growth_kb'] / 1024:.1f} MB, {b['seconds']:.2f} s"
        )
    out += ["", "idle sessions (greeted, silent):"]
    for impl, d in r.idle.items():
        out.append(
            f"  {impl:<5} {d['sessions']:.0f} held, RSS {d['base_kb'] / 1024:.1f} -> "
            f"{d['rss_kb'] / 1024:.1f} MB, {d['per_session_kb']:.1f} KB/session, "
            f"opened in {d['open_seconds']:.1f} s"
        )
    out += ["", "targets (issue 7):"]
    out += targets(r)
    out += ["", f"total time {elapsed:.0f} s"]
    return "\n".join(out)


def targets(r: Results) -> list[str]:
    lines = []

    def check(label: str, ok: bool, detail: str) -> None:
        lines.append(f"  [{'met' if ok else 'MISSED'}] {label}: {detail}")

    if "no filter" in r.runs:
        ratio = median_ratio(r.runs["no filter"])
        check("no filter >= 4x C msg/s", ratio >= 4, f"{ratio:.2f}x")
        p50 = statistics.median(x.p50_ms for x in r.runs["no filter"]["ours"])
        check("no filter p50 <= 3 ms", p50 <= 3, f"{p50:.2f} ms")
    if "cat" in r.runs:
        ratio = median_ratio(r.runs["cat"])
        check("cat >= 1.8x C msg/s", ratio >= 1.8, f"{ratio:.2f}x")
    for name, want in (("milter", 3.0), ("dkim sign", 1.5)):
        if name in r.runs and "cat" in r.runs:
            ratio = median_ratio(r.runs[name], r.runs["cat"]["C"])
            check(f"{name} >= {want:g}x C's cat msg/s", ratio >= want, f"{ratio:.2f}x")
    if "ours" in r.big:
        g = r.big["ours"]["growth_kb"] / 1024
        check("50 MB message RSS growth <= 10 MB", g <= 10, f"{g:.1f} MB")
    if "ours" in r.idle:
        d = r.idle["ours"]
        ok = d["per_session_kb"] <= 25 and d["sessions"] >= 5000
        check("5,000 idle sessions, <= 25 KB each", ok, f"{d['per_session_kb']:.1f} KB")
    if "ours" in r.levels:
        lv = {k: statistics.median(v) for k, v in r.levels["ours"].items()}
        lo, hi = min(lv), max(lv)
        drop = 1 - lv[hi] / lv[lo]
        check(f"{lo} -> {hi} sessions drop <= 20%", drop <= 0.2, f"{drop * 100:+.1f}% drop")
    return lines


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


# ---------------------------------------------------------------- the next server: TLS, PIPELINING
#
# Issue 11: ours only, three scenarios that differ in one thing each, all through the same
# haproxy (mode tcp) in front of smtp-sink and the same pipelining load client: "lock-step"
# (the sink offers no PIPELINING, plain text), "PIPELINING upstream" (the sink offers it:
# the proxy sends MAIL+RCPT+RCPT in one write), "TLS upstream" (OutTLS: implicit, haproxy
# terminates TLS; no PIPELINING).

HAPROXY = shutil.which("haproxy", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
UPSTREAM_SCENARIOS = ("lock-step", "PIPELINING upstream", "TLS upstream")


class Front:
    """smtp-sink (with or without PIPELINING) behind haproxy, plain or terminating TLS."""

    def __init__(self, workdir: Path, pipelining: bool, tls_pem: Path | None) -> None:
        self.sink_port, self.port = free_port(), free_port()
        self.out = workdir / f"sink-{self.sink_port}.out"
        cmd = [str(SINK), *([] if pipelining else ["-p"]), "-c", f"{HOST}:{self.sink_port}"]
        cmd.append("1024")
        if os.geteuid() == 0:
            cmd[1:1] = ["-u", "nobody"]
        with open(self.out, "wb") as out:
            self.sink = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        wait_listening(self.sink_port, self.sink)
        ssl = f" ssl crt {tls_pem}" if tls_pem is not None else ""
        self.conf = workdir / f"haproxy-{self.port}.cfg"
        self.conf.write_text(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n"
            "  timeout client 60s\n  timeout server 60s\nlisten smtp\n"
            f"  bind {HOST}:{self.port}{ssl}\n  server sink {HOST}:{self.sink_port}\n"
        )
        self.haproxy = subprocess.Popen(
            [str(HAPROXY), "-db", "-f", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port, self.haproxy)

    def count(self) -> int:
        return Sink.count(self)  # type: ignore[arg-type]

    def close(self) -> None:
        stop(self.haproxy)
        stop(self.sink)
        self.out.unlink(missing_ok=True)
        self.conf.unlink(missing_ok=True)


def pipelined_message(sock: socket.socket, rfile: object, body: bytes, pipelining: bool) -> None:
    """MAIL, two RCPTs and DATA (in one write when the proxy offers PIPELINING), the body."""
    lines = [b"MAIL FROM:<from@example.org>\r\n", b"RCPT TO:<a@example.net>\r\n"]
    lines += [b"RCPT TO:<b@example.net>\r\n", b"DATA\r\n"]
    read = rfile.readline  # type: ignore[attr-defined]

    def reply() -> bytes:
        while (line := read())[3:4] == b"-":
            pass
        if not line:
            raise ConnectionError("connection closed")
        return bytes(line)

    if pipelining:
        sock.sendall(b"".join(lines))
        codes = [reply()[:3] for _ in lines]
    else:
        codes = []
        for line in lines:
            sock.sendall(line)
            codes.append(reply()[:3])
    if codes != [b"250", b"250", b"250", b"354"]:
        raise RuntimeError(f"unexpected replies {codes}")
    sock.sendall(body + b".\r\n")
    if not reply().startswith(b"250"):
        raise RuntimeError("message refused")


def pipelining_session(port: int, stop_at: threading.Event, done: list[float]) -> None:
    """One session sending messages until `stop_at`; each message's duration into `done`."""
    client = Client(port)
    client.sock.sendall(b"EHLO bench.example\r\n")
    ehlo = b""
    while True:
        line = client.rfile.readline()
        ehlo += line
        if line[3:4] != b"-":
            break
    pipelining = b"PIPELINING" in ehlo
    body = text(MSG_SIZE)
    try:
        while not stop_at.is_set():
            t0 = time.perf_counter()
            pipelined_message(client.sock, client.rfile, body, pipelining)
            done.append(time.perf_counter() - t0)
    finally:
        client.close()


def upstream_run(workdir: Path, scenario: str, s: Settings, tls_pem: Path, ca: Path) -> Run:
    tls = scenario == "TLS upstream"
    front = Front(workdir, scenario == "PIPELINING upstream", tls_pem if tls else None)
    extra = "Pipelining: on\n"
    if tls:
        extra += f"OutTLS: implicit\nOutTLSCAFile: {ca}\n"
    proxy = Proxy("ours", workdir, front.port, extra)
    try:
        stop_at = threading.Event()
        durations: list[float] = []
        threads = [
            threading.Thread(target=pipelining_session, args=(proxy.port, stop_at, durations))
            for _ in range(s.sessions)
        ]
        for thread in threads:
            thread.start()
        try:
            rate = rate_at_sink(front, s.warmup, s.window)  # type: ignore[arg-type]
        finally:
            stop_at.set()
            for thread in threads:
                thread.join()
        # Latency: one session alone, message by message (MAIL to the final 250).
        alone: list[float] = []
        stop_alone = threading.Event()
        timer = threading.Timer(s.latency_budget, stop_alone.set)
        timer.start()
        pipelining_session(proxy.port, stop_alone, alone)
        return Run(rate, pct(alone, 0.5) * 1e3, pct(alone, 0.99) * 1e3, len(alone))
    finally:
        proxy.close()
        front.close()


def upstream_scenarios(workdir: Path, s: Settings) -> dict[str, list[Run]]:
    from trio_proxsmtp.testing.certs import make_test_certificates

    certs = make_test_certificates(workdir / "certs")
    pem = workdir / "certs" / "haproxy.pem"
    pem.write_bytes(certs.certificate.read_bytes() + certs.key.read_bytes())
    runs: dict[str, list[Run]] = {}
    for rnd in range(s.rounds):
        order = UPSTREAM_SCENARIOS if rnd % 2 == 0 else UPSTREAM_SCENARIOS[::-1]
        for scenario in order:
            run = upstream_run(workdir, scenario, s, pem, certs.ca)
            runs.setdefault(scenario, []).append(run)
            progress(f"round {rnd + 1} {scenario}: {run.rate:.0f} msg/s, p50 {run.p50_ms:.2f} ms")
    return runs


def upstream_report(runs: dict[str, list[Run]]) -> str:
    lines = ["", "Next server: TLS and PIPELINING (ours, pipelining clients, medians)"]
    base = statistics.median(r.rate for r in runs["lock-step"])
    for scenario, rs in runs.items():
        rate = statistics.median(r.rate for r in rs)
        p50 = statistics.median(r.p50_ms for r in rs)
        lines.append(
            f"  {scenario:<20} {rate:8.0f} msg/s ({rate / base:5.2f}x lock-step)  p50 {p50:6.2f} ms"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about one minute")
    parser.add_argument("--rounds", type=int, help="override the number of rounds (>= 1)")
    parser.add_argument(
        "--only", choices=["main", "levels", "big", "idle", "upstream"], action="append"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="run ours with Workers: N (an extension)"
    )
    parser.add_argument(
        "--scenario", action="append", help="main part: only these scenarios (repeatable)"
    )
    args = parser.parse_args()
    global OUR_WORKERS
    OUR_WORKERS = max(1, args.workers)
    s = QUICK if args.quick else FULL
    if args.rounds:
        s.rounds = args.rounds
    for tool, name in ((SINK, "smtp-sink"), (SOURCE, "smtp-source"), (C_PROXY, "proxsmtpd")):
        if tool is None:
            sys.exit(f"{name} not found (Debian packages postfix and proxsmtp)")
    parts = set(args.only or ["main", "levels", "big", "idle", "upstream"])
    r = Results(s)
    upstream: dict[str, list[Run]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="proxsmtp-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # smtp-sink runs as nobody; proxies run as us
        milters = contextlib.ExitStack()
        scenarios = dict(SCENARIOS)
        wanted = set(args.scenario or [*SCENARIOS, *MILTER_SCENARIOS])
        if "main" in parts and wanted & set(MILTER_SCENARIOS):
            addresses = milters.enter_context(start_milters(workdir))
            for name, template in MILTER_SCENARIOS.items():
                with contextlib.suppress(KeyError):  # no OpenDKIM: no dkim scenario
                    scenarios[name] = template.format(**addresses)
        scenarios = {k: v for k, v in scenarios.items() if k in wanted}
        if "main" in parts:
            for rnd in range(s.rounds):
                for name, extra in scenarios.items():
                    order = IMPLS if rnd % 2 == 0 else IMPLS[::-1]
                    for impl in order:
                        if impl == "C" and name in MILTER_SCENARIOS:
                            continue  # C has no milters: compared with its `cat`
                        run = one_run(impl, workdir, extra, s, s.sessions)
                        r.runs.setdefault(name, {}).setdefault(impl, []).append(run)
                        progress(f"round {rnd + 1} {name} {impl}: {run.rate:.0f} msg/s")
                run = one_run("direct", workdir, "", s, s.sessions)
                r.runs.setdefault("direct", {}).setdefault("direct", []).append(run)
                progress(f"round {rnd + 1} direct: {run.rate:.0f} msg/s")
        milters.close()
        if "levels" in parts:
            # One level alone swings by +-20 % on a shared 2-core VM: rounds, medians, and
            # the order of levels and of the two proxies alternated like the main runs.
            for rnd in range(s.rounds):
                levels = s.levels if rnd % 2 == 0 else s.levels[::-1]
                for level in levels:
                    for impl in IMPLS if rnd % 2 == 0 else IMPLS[::-1]:
                        run = one_run(impl, workdir, "", s, level, latency=False)
                        r.levels.setdefault(impl, {}).setdefault(level, []).append(run.rate)
                        progress(f"round {rnd + 1} {level} sessions {impl}: {run.rate:.0f} msg/s")
        if "big" in parts:
            for impl in IMPLS:
                r.big[impl] = big_message(impl, workdir, s.big_mb)
                progress(f"big {impl}: {r.big[impl]}")
        if "idle" in parts:
            for impl in IMPLS:
                # C 1.10 uses select(): a descriptor above FD_SETSIZE (1024) aborts it, at
                # about 510 sessions (two descriptors each), so it gets C_IDLE sessions.
                count = s.idle if impl == "ours" else min(s.idle, C_IDLE)
                r.idle[impl] = idle_sessions(impl, workdir, count)
                progress(f"idle {impl}: {r.idle[impl]}")
        if "upstream" in parts:
            if HAPROXY is None:
                sys.exit("haproxy not found (Debian package haproxy)")
            upstream = upstream_scenarios(workdir, s)
    text_out = report(r, time.monotonic() - started)
    if upstream:
        text_out += "\n" + upstream_report(upstream)
    print(text_out)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    (results / f"{stamp}.txt").write_text(text_out + "\n")
    (results / f"{stamp}.json").write_text(json.dumps(as_json(r), indent=1) + "\n")
    print(f"\nwritten to {results / stamp}.txt and .json")


def as_json(r: Results) -> dict[str, object]:
    return {
        "settings": vars(r.settings),
        "runs": {n: {i: [vars(x) for x in rs] for i, rs in d.items()} for n, d in r.runs.items()},
        "levels": r.levels,
        "big": r.big,
        "idle": r.idle,
    }


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
