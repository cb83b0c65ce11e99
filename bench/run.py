"""Benchmark trio_proxsmtp against the C proxsmtpd 1.10 (issues 7 and 15); python bench/run.py.

Load is Postfix's smtp-source, the upstream is Postfix's smtp-sink, and messages/s are counted
at the sink (its running ``-c`` counter, sampled over a steady-state window after a warm-up),
so connection set-up and tear-down do not blur the rate.  The implementations run in an
order alternated from round to round, each with a fresh proxy and sink and the same config,
and every ratio is the median of the per-round ratios.  Latency (final dot -> reply) comes
from a small blocking client that sends messages one at a time on one session against an
otherwise idle proxy.  CPU per message is the proxy's CPU time (utime + stime from
/proc/PID/stat, over the same window) divided by the messages the sink counted in it.
Everything (load generator, proxy, sink, filters) shares this machine's cores: the numbers
are relative.

Parts (``--only``): main (10 sessions: latency, filters), levels (ours Workers 1, ours
Workers auto, C and a bare Trio splice at 10..500 sessions), deliver (every message of a
fixed load at the highest level reaches the sink), big (one 50 MB message), idle (5,000
silent sessions), upstream (issue 11, ours only, through haproxy: the plain lock-step run,
PIPELINING towards the next server and TLS towards it), scanners (issue 22, ours only: the
same clamd and spamd through the contrib shell filters and through ``Scanners:``, at 10
and 50 sessions; bench/scanners.py; only with --only).  Standard library only, plus the
package under test.
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
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

HOST = "127.0.0.1"
_PATH = "/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")
SINK = shutil.which("smtp-sink", path=_PATH)
SOURCE = shutil.which("smtp-source", path=_PATH)
C_PROXY = shutil.which("proxsmtpd", path=_PATH)
REPO = Path(__file__).resolve().parent.parent
SPLICE = Path(__file__).resolve().parent / "splice.py"
SESSIONS_PER_SOURCE = 5  # the C proxy's listen backlog is 5: start sessions in fives
STAGGER = 0.02  # seconds between two smtp-source processes
MSG_SIZE = 2048
C_IDLE = 500
SINK_MAX_SESSIONS = 4096  # smtp-sink -m: its default of 256 would queue the rest
NOFILE = 16384
T = TypeVar("T")
PARTS = ("main", "levels", "deliver", "big", "idle", "upstream", "scanners")
# Without --only: all but the scanners (they need clamd, spamd, clamdscan and spamc).
DEFAULT_PARTS = PARTS[:-1]

# Implementations: "ours" runs Workers OUR_WORKERS (--workers, default auto), "ours1" runs
# Workers 1, "C" is proxsmtpd 1.10, "splice" is bench/splice.py, "direct" is no proxy.
OUR_WORKERS = "auto"
OURS_PREFIX: list[str] = []  # interpreter options before "-m trio_proxsmtp" (spy.py: cProfile)
# The command that starts ours, "-d 0 -f CONF" appended; empty: this interpreter with
# OURS_PREFIX and "-m trio_proxsmtp" (tls_clients.py --impl: another build of the proxy).
OURS_COMMAND: list[str] = []
LABELS = {
    "ours1": "ours W1",
    "ours": "ours Wauto",
    "C": "C",
    "splice": "splice",
    "direct": "direct",
}


@dataclass
class Settings:
    rounds: int
    sessions: int  # the main part
    warmup: float
    window: float
    level_window: float
    latency_budget: float
    latency_max: int
    levels: tuple[int, ...]
    deliver_per_session: int  # enough that the first sessions still send when the last start
    big_mb: int
    idle: int


FULL = Settings(3, 10, 0.8, 2.5, 2.0, 1.5, 300, (10, 50, 200, 500), 40, 50, 5000)
QUICK = Settings(2, 10, 0.3, 0.6, 0.6, 0.3, 100, (10, 50, 200, 500), 10, 50, 5000)


# ---------------------------------------------------------------- upstreams and scenarios


class Upstream(Protocol):
    """Where the proxy relays to; counts the messages it accepted."""

    port: int

    def count(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Scenario:
    """One config and upstream, run for ours and (unless `c` is None) for C.

    Later scenarios plug in here without touching the runners: a TLS or PIPELINING upstream
    is an `upstream` factory (anything with .port, .count(), .close()), a milter or another
    helper process is an `extra` context manager entered around each run (it gets the work
    directory and yields nothing; it stops what it started), and `{workdir}` in the config
    text is replaced by the run's temporary directory.
    """

    name: str
    ours: str = ""  # extra config lines for ours
    c: str | None = ""  # extra config lines for C; None: ours only (C has no such feature)
    upstream: Callable[[Path], Upstream] | None = None  # None: smtp-sink
    extra: Callable[[Path], AbstractContextManager[object]] | None = None

    def config(self, impl: str, workdir: Path) -> str:
        text = self.c if impl == "C" else self.ours
        if text is None:
            raise ValueError(f"scenario {self.name!r} has no config for C")
        text = text.replace("{workdir}", str(workdir)).replace("{milter}", _MILTER[0])
        return text.replace("{metrics_port}", str(free_port()))

    def impls(self, impls: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(i for i in impls if i != "C" or self.c is not None)

    def open_upstream(self, workdir: Path) -> Upstream:
        return self.upstream(workdir) if self.upstream is not None else Sink(workdir)


_MILTER = [""]  # the address of the milter run_milter started for the current run
PATH_PREFIX: list[str] = []  # directories put before PATH in the proxy's environment


@contextlib.contextmanager
def run_milter(workdir: Path, kind: str) -> Iterator[None]:
    """bench/accept_milter.py, or OpenDKIM signing with a 2048-bit key (made once), on a
    free port for one run; `{milter}` in the scenario's config becomes its address."""
    port = free_port()
    if kind == "accept":
        cmd = [sys.executable, str(Path(__file__).with_name("accept_milter.py")), str(port)]
    else:
        path = "/usr/sbin:" + os.environ.get("PATH", "")
        opendkim = shutil.which("opendkim", path=path)
        genkey = shutil.which("opendkim-genkey", path=path)
        if opendkim is None or genkey is None:
            raise RuntimeError("opendkim not found (Debian packages opendkim, opendkim-tools)")
        keys = workdir / "dkim"
        if not keys.exists():
            keys.mkdir()
            subprocess.run([genkey, "-b", "2048", "-d", "example.org", "-s", "bench", "-D",
                            str(keys)], check=True)  # fmt: skip
        conf = keys / "opendkim.conf"
        conf.write_text(
            f"Mode s\nSocket inet:{port}@{HOST}\nDomain example.org\nSelector bench\n"
            f"KeyFile {keys / 'bench.private'}\nCanonicalization relaxed/simple\n"
            f"Syslog no\nUserID root\nRequireSafeKeys no\nPidFile {keys / 'pid'}\n"
        )
        cmd = [opendkim, "-f", "-x", str(conf)]
    proc = subprocess.Popen(cmd)
    try:
        wait_listening(port, proc)
        _MILTER[0] = f"inet:{HOST}:{port}"
        yield
    finally:
        stop(proc)


MAIN_SCENARIOS = (
    Scenario("no filter"),
    Scenario("cat", "FilterCommand: cat\n", "FilterCommand: cat\n"),
    Scenario(
        "file+true",
        "FilterType: file\nFilterCommand: true\n",
        "FilterType: file\nFilterCommand: true\n",
    ),
    # "no filter" with the Prometheus listener on: what the metrics cost (ours only).
    Scenario("metrics on", "MetricsListen: 127.0.0.1:{metrics_port}\n", None),
    # Milters (issue 14), ours only: C has none, so they are compared with C's `cat`.
    # bench/accept_milter.py sees every message and accepts it; OpenDKIM signs it.
    Scenario("milter", "Milters: {milter}\n", None, extra=lambda w: run_milter(w, "accept")),
    Scenario("dkim sign", "Milters: {milter}\n", None, extra=lambda w: run_milter(w, "dkim")),
)
MILTER_SCENARIOS = ("milter", "dkim sign")
LEVEL_SCENARIOS = MAIN_SCENARIOS[:2]


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


def established(port: int) -> int:
    """How many connections to 127.0.0.1:port are established right now (/proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return sum(
            1
            for line in f.readlines()[1:]
            if (fields := line.split())[1] == want and fields[3] == "01"
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
        cmd = [str(SINK), "-c", "-m", str(SINK_MAX_SESSIONS), f"{HOST}:{self.port}", str(backlog)]
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


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state is [0], utime [11])."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """Direct children of `pid` (our workers under their supervisor)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int(proc_stat(int(entry))[1]) == pid:
                    found.append(int(entry))
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Proxy:
    """Our proxy (Workers 1 or OUR_WORKERS), the C proxsmtpd, or the bare splice, in the
    foreground, with a config made for this run."""

    def __init__(
        self, impl: str, workdir: Path, upstream: int, extra: str, max_conn: int = 256
    ) -> None:
        self.impl = impl
        self.port = free_port()
        self.conf = workdir / f"{impl}-{self.port}.conf"
        if impl in ("ours", "ours1"):  # our extension; C has no such option
            extra += f"Workers: {OUR_WORKERS if impl == 'ours' else 1}\n"
        self.conf.write_text(
            f"Listen: {HOST}:{self.port}\nOutAddress: {HOST}:{upstream}\n"
            f"TempDirectory: {workdir}\nMaxConnections: {max_conn}\n{extra}"
        )
        if impl in ("ours", "ours1"):
            cmd = OURS_COMMAND or [sys.executable, *OURS_PREFIX, "-m", "trio_proxsmtp"]
            cmd = [*cmd, "-d", "0", "-f"]
            cmd.append(str(self.conf))
        elif impl == "splice":
            cmd = [sys.executable, str(SPLICE), str(self.port), str(upstream)]
        else:
            cmd = [str(C_PROXY), "-d", "0", "-f", str(self.conf)]
        self.log = workdir / f"{impl}-{self.port}.log"
        env = dict(os.environ, PYTHONPATH=str(REPO))
        if PATH_PREFIX:  # the scanner scenarios' spamc/clamdscan shims
            env["PATH"] = os.pathsep.join([*PATH_PREFIX, env.get("PATH", "")])
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir
            )
        wait_listening(self.port, self.proc)
        self._workers: list[int] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        """The proxy's processes: with a supervisor, its workers too (not filters)."""
        if self.impl != "ours" or auto_count() == 1:
            return [self.pid]
        if self._workers is None or len(self._workers) < auto_count():
            self._workers = children(self.pid)
        return [self.pid, *self._workers]

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = proc_stat(pid)
                total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def _kb(self, key: str) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, KeyError):
                total += proc_kb(pid, key)
        return total

    def rss_kb(self) -> int:
        return self._kb("VmRSS")

    def hwm_kb(self) -> int:
        return self._kb("VmHWM")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def death(self) -> str:
        """How it ended, with the last line it logged (C: "bit out of range ..." and such)."""
        code = self.proc.poll()
        if code is None:
            return ""
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return f"{how}: {lines[-1][:100]}" if lines else how

    def close(self) -> None:
        stop(self.proc)
        self.conf.unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)


@contextlib.contextmanager
def load(
    port: int, sessions: int, per_session: int = 0, errors: Path | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """smtp-source sessions that keep sending (-d: many messages per session), started in
    groups of SESSIONS_PER_SOURCE so that a listen backlog of 5 does not drop SYNs.
    `per_session`: send that many messages per session, then stop (0: until killed);
    `errors`: a directory for each process's stderr (source-PORT-I.err)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        left = sessions
        while left > 0:
            n = min(SESSIONS_PER_SOURCE, left)
            left -= n
            count = n * per_session if per_session else 100_000_000
            cmd = [str(SOURCE), "-d", "-s", str(n), "-m", str(count), "-l", str(MSG_SIZE)]
            cmd += ["-f", "from@example.org", "-t", "to@example.net", f"{HOST}:{port}"]
            if errors is not None:
                with open(errors / f"source-{port}-{len(procs)}.err", "wb") as err:
                    procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err))
            else:
                procs.append(
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                )
            time.sleep(STAGGER)
        yield procs
    finally:
        for p in procs:
            stop(p, signal.SIGKILL)


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
    cpu_ms: float = 0.0  # proxy CPU time per message counted at the sink, in ms
    rss_kb: int = 0  # at the end of the window (every process of the proxy)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    samples: int = 0
    hwm_kb: int = 0
    died: str = ""  # how the proxy ended if it did not survive the run
    load_ms: float = 0.0  # CPU of the load generator (smtp-source + sink) per message, ms


@dataclass
class Results:
    settings: Settings
    runs: dict[str, dict[str, list[Run]]] = field(default_factory=dict)  # scenario, impl
    # scenario -> impl -> level -> every round
    levels: dict[str, dict[str, dict[int, list[Run]]]] = field(default_factory=dict)
    deliver: dict[str, Delivery] = field(default_factory=dict)
    big: dict[str, dict[str, float]] = field(default_factory=dict)
    idle: dict[str, dict[str, float]] = field(default_factory=dict)


def cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes so far; gone ones count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = proc_stat(pid)
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def measure(
    proxy: Proxy | None,
    upstream: Upstream,
    warmup: float,
    window: float,
    load_pids: list[int] | None = None,
) -> tuple[float, float, float]:
    """(messages/s at the upstream, proxy CPU ms per message, load CPU ms per message)
    over `window` after `warmup`; the load is smtp-source and the sink (`load_pids`)."""
    pids = load_pids or []
    time.sleep(warmup)
    cpu0 = proxy.cpu_seconds() if proxy else 0.0
    load0 = cpu_of(pids)
    c0, t0 = upstream.count(), time.monotonic()
    time.sleep(window)
    c1, t1 = upstream.count(), time.monotonic()
    cpu1 = proxy.cpu_seconds() if proxy else 0.0
    load1 = cpu_of(pids)
    messages = c1 - c0
    if not messages:
        return 0.0, 0.0, 0.0
    per = 1e3 / messages
    return messages / (t1 - t0), (cpu1 - cpu0) * per, (load1 - load0) * per


def load_pids(upstream: Upstream, sources: list[subprocess.Popen[bytes]]) -> list[int]:
    """The load generator's processes: the smtp-source clients and the sink."""
    sink = getattr(upstream, "proc", None)
    return [p.pid for p in sources] + ([sink.pid] if sink is not None else [])


def one_run(
    impl: str,
    workdir: Path,
    scenario: Scenario,
    sessions: int,
    warmup: float,
    window: float,
    latency: tuple[float, int] | None = None,
    max_conn: int = 256,
) -> Run:
    upstream = scenario.open_upstream(workdir)
    try:
        if impl == "direct":
            with load(upstream.port, sessions) as sources:
                rate, _cpu, load_ms = measure(
                    None, upstream, warmup, window, load_pids(upstream, sources)
                )
                return Run(rate, load_ms=load_ms)
        with contextlib.ExitStack() as stack:
            if scenario.extra is not None:
                stack.enter_context(scenario.extra(workdir))
            proxy = Proxy(impl, workdir, upstream.port, scenario.config(impl, workdir), max_conn)
            stack.callback(proxy.close)
            with load(proxy.port, sessions) as sources:
                rate, cpu_ms, load_ms = measure(
                    proxy, upstream, warmup, window, load_pids(upstream, sources)
                )
                rss = proxy.rss_kb()
            run = Run(rate, cpu_ms, rss, hwm_kb=proxy.hwm_kb(), load_ms=load_ms)
            if run.died or not proxy.alive():
                run.died = proxy.death()
                return run
            if latency is not None:
                lat = latencies(proxy.port, *latency)
                run.p50_ms, run.p99_ms = pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3
                run.samples = len(lat)
                run.hwm_kb = proxy.hwm_kb()
            if not proxy.alive():
                run.died = proxy.death()
            return run
    finally:
        upstream.close()


@dataclass
class Delivery:
    sessions: int
    expected: int
    delivered: int
    seconds: float
    unfinished_sources: int
    failed_sources: int
    peak_sessions: int  # the most sessions open at the proxy at once (sampled)
    client_errors: int
    first_error: str
    proxy: str  # "alive", or how it died


def deliver(impl: str, workdir: Path, sessions: int, per_session: int, max_conn: int) -> Delivery:
    """A fixed load (`per_session` messages on each of `sessions` sessions): how many of the
    messages the clients sent reach the sink, and what the clients and the proxy said."""
    sink = Sink(workdir)
    proxy = Proxy(impl, workdir, sink.port, "", max_conn)
    sources = -(-sessions // SESSIONS_PER_SOURCE)
    expected = sessions * per_session
    t0 = time.monotonic()
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            with contextlib.suppress(OSError, IndexError):
                peak = max(peak, established(proxy.port))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with load(proxy.port, sessions, per_session, workdir) as procs:
            deadline = time.monotonic() + 60 + expected / 200
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.1, deadline - time.monotonic()))
            seconds = time.monotonic() - t0
            done.set()
            sampler.join()
            unfinished = sum(p.poll() is None for p in procs)
            failed = sum(p.poll() not in (None, 0) for p in procs)
            errors = [
                line
                for i in range(sources)
                for line in (workdir / f"source-{proxy.port}-{i}.err")
                .read_text(errors="replace")
                .splitlines()
                if line.strip()
            ]
        time.sleep(0.3)  # the last messages reach the sink
        return Delivery(
            sessions,
            expected,
            sink.count(),
            seconds,
            unfinished,
            failed,
            peak,
            len(errors),
            errors[0] if errors else "",
            "alive" if proxy.alive() else proxy.death(),
        )
    finally:
        done.set()
        if sampler.is_alive():
            sampler.join()
        proxy.close()
        sink.close()


def big_message(
    impl: str,
    workdir: Path,
    megabytes: int,
    config: str = "FilterCommand: cat\nFilterTimeout: 120\n",
) -> dict[str, float]:
    """RSS growth of the proxy while one large message passes through `cat` (or `config`)."""
    sink = Sink(workdir)
    proxy = Proxy(impl, workdir, sink.port, config)
    try:
        client = Client(proxy.port, timeout=180)
        client.command(b"EHLO bench.example", b"250")
        client.message(lambda sock: sock.sendall(text(MSG_SIZE)))  # warm up the code paths
        time.sleep(0.2)
        base = proxy.rss_kb()
        peak = base
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.005):
                with contextlib.suppress(OSError, KeyError, ValueError):
                    peak = max(peak, proxy.rss_kb())

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
    """An upstream that greets and then holds each connection silently (smtp-sink would
    need -m for 5,000 sessions and answers more than a greeting)."""

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
    upstream = Greeter()
    proxy = Proxy(impl, workdir, upstream.port, "", max_conn=count + 100)
    socks: list[socket.socket] = []
    try:
        for _ in range(5):  # warm up (the greeter never answers QUIT: just hang up)
            with socket.create_connection((HOST, proxy.port), timeout=30) as sock:
                sock.recv(512)
        time.sleep(0.3)
        base = proxy.rss_kb()
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
        rss = proxy.rss_kb()
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


def show_ratio(ratio: float) -> str:
    """A ratio to C; infinite when C delivered nothing (it died): said in words."""
    return "C died" if ratio == float("inf") else f"{ratio:.2f}"


def median_ratio(ours: list[Run], c: list[Run]) -> float:
    """Median of the per-round ratios (a round where C delivered nothing counts as inf)."""
    return statistics.median(
        o.rate / r.rate if r.rate else float("inf") for o, r in zip(ours, c, strict=True)
    )


def order(items: tuple[T, ...], rnd: int) -> tuple[T, ...]:
    """A, B, C in even rounds, C, B, A in odd ones."""
    return items if rnd % 2 == 0 else items[::-1]


# ---------------------------------------------------------------- report


def report(r: Results, elapsed: float) -> str:
    s = r.settings
    out = [
        f"trio_proxsmtp vs C proxsmtpd 1.10 — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"machine: {platform.machine()} {cpu_model()}, {os.cpu_count()} cores (shared by load, "
        f"proxy, sink, filters); Linux {platform.release()}; Python {platform.python_version()}",
        f"{s.rounds} rounds, order alternated; {MSG_SIZE}-byte messages; rate = sink count over "
        f"{s.window:g} s (levels {s.level_window:g} s) after {s.warmup:g} s warm-up",
        f"ours Wauto = Workers {OUR_WORKERS} ({auto_count()} here), ours W1 = Workers 1; "
        "C and ours get the same config otherwise",
    ]
    if r.runs:
        out += [
            "",
            f"{s.sessions} sessions; latency = final dot -> reply, one session on an idle proxy",
            f"{'scenario':<11} {'impl':<10} {'msg/s (rounds)':<24} {'median':>7} {'ours/C':>7} "
            f"{'p50 ms':>7} {'p99 ms':>7} {'n':>4} {'peak RSS':>9}",
        ]
    for name, runs in r.runs.items():
        for impl, rs in runs.items():
            rates = " ".join(f"{x.rate:.0f}" for x in rs)
            med = statistics.median(x.rate for x in rs)
            ratio = show_ratio(median_ratio(rs, runs["C"])) if impl != "C" and "C" in runs else ""
            if name in MILTER_SCENARIOS and impl == "ours" and "C" in r.runs.get("cat", {}):
                ratio = show_ratio(median_ratio(rs, r.runs["cat"]["C"])) + "c"  # vs C's cat
            label = LABELS[impl]
            if impl == "direct":
                out.append(f"{name:<11} {label:<10} {rates:<24} {med:>7.0f}")
                continue
            p50 = statistics.median(x.p50_ms for x in rs)
            p99 = statistics.median(x.p99_ms for x in rs)
            n = min(x.samples for x in rs)
            hwm = max(x.hwm_kb for x in rs) / 1024
            out.append(
                f"{name:<11} {label:<10} {rates:<24} {med:>7.0f} {ratio:>7} {p50:>7.2f} "
                f"{p99:>7.2f} {n:>4} {hwm:>7.1f}MB" + died(rs)
            )
    for name, by_impl in r.levels.items():
        out += [
            "",
            f"concurrent sessions, {name}: msg/s median (rounds), ours/C, CPU ms/msg, RSS",
            f"{'sessions':>8} {'impl':<10} {'msg/s (rounds)':<24} {'median':>7} {'ours/C':>7} "
            f"{'CPU ms':>7} {'RSS':>8} {'load ms':>8}",
        ]
        for level in s.levels:
            for impl, lv in by_impl.items():
                if level in lv:
                    out.append(level_line(level, impl, lv[level], by_impl.get("C", {}).get(level)))
        out.append(
            "  CPU ms = process CPU time / messages at the sink (all workers for Wauto, "
            "all threads for C); load ms = the same for smtp-source and smtp-sink"
        )
    if r.deliver:
        out += ["", "fixed load, every message counted at the sink:"]
        for impl, dv in r.deliver.items():
            out.append(
                f"  {LABELS[impl]:<10} {dv.sessions} sessions "
                f"(at most {dv.peak_sessions} at once): {dv.delivered}/{dv.expected} "
                f"delivered in {dv.seconds:.1f} s; clients: {dv.failed_sources} failed, "
                f"{dv.unfinished_sources} unfinished, {dv.client_errors} error lines"
                f"{' (' + dv.first_error[:80] + ')' if dv.first_error else ''}; "
                f"proxy {dv.proxy}"
            )
    if r.big:
        out += ["", f"one {s.big_mb} MB message through `cat`:"]
    for impl, b in r.big.items():
        out.append(
            f"  {LABELS[impl]:<10} RSS {b['base_kb'] / 1024:.1f} MB before, growth "
            f"{b['growth_kb'] / 1024:.1f} MB, {b['seconds']:.2f} s"
        )
    if r.idle:
        out += ["", "idle sessions (greeted, silent):"]
    for impl, d in r.idle.items():
        out.append(
            # ours runs one process here (Workers 1): see the idle part in main().
            f"  {LABELS['ours1' if impl == 'ours' else impl]:<10} {d['sessions']:.0f} held, "
            f"RSS {d['base_kb'] / 1024:.1f} -> "
            f"{d['rss_kb'] / 1024:.1f} MB, {d['per_session_kb']:.1f} KB/session, "
            f"opened in {d['open_seconds']:.1f} s"
        )
    out += ["", "targets (issue 15, and issue 7's that still hold):"]
    out += targets(r)
    out += ["", f"total time {elapsed:.0f} s"]
    return "\n".join(out)


def level_line(level: int, impl: str, rs: list[Run], c: list[Run] | None) -> str:
    rates = " ".join(f"{x.rate:.0f}" for x in rs)
    med = statistics.median(x.rate for x in rs)
    ratio = show_ratio(median_ratio(rs, c)) if c and impl != "C" else ""
    cpu = statistics.median(x.cpu_ms for x in rs)
    rss = statistics.median(x.rss_kb for x in rs) / 1024
    load_ms = statistics.median(x.load_ms for x in rs)
    return (
        f"{level:>8} {LABELS[impl]:<10} {rates:<24} {med:>7.0f} {ratio:>7} "
        f"{cpu:>7.3f} {rss:>6.1f}MB {load_ms:>8.3f}" + died(rs)
    )


def died(runs: list[Run]) -> str:
    deaths = [x.died for x in runs if x.died]
    return f"  DIED {len(deaths)}x: {deaths[0]}" if deaths else ""


def targets(r: Results) -> list[str]:
    lines = []

    def check(label: str, ok: bool, detail: str) -> None:
        lines.append(f"  [{'met' if ok else 'MISSED'}] {label}: {detail}")

    def level_ratio(scenario: str, level: int) -> float | None:
        by_impl = r.levels.get(scenario, {})
        ours, c = by_impl.get("ours", {}).get(level), by_impl.get("C", {}).get(level)
        return median_ratio(ours, c) if ours and c else None

    for scenario, level, want in (
        ("no filter", 200, 2.0),
        ("cat", 200, 1.5),
        ("no filter", 10, 4.0),
        ("no filter", 500, 1.0),
    ):
        ratio = level_ratio(scenario, level)
        if ratio is not None:
            c_runs = r.levels[scenario]["C"][level]
            deaths = sum(bool(x.died) for x in c_runs)
            check(
                f"Wauto {level} sessions, {scenario}: >= {want:g}x C",
                ratio >= want,
                (f"{ratio:.2f}x" if ratio != float("inf") else "C delivered nothing")
                + (f" (C died in {deaths} of {len(c_runs)} runs)" if deaths else ""),
            )
    lines += ceiling(r, "no filter", 200, 2.0)
    if "no filter" in r.runs:
        p50 = statistics.median(x.p50_ms for x in r.runs["no filter"]["ours"])
        check("Wauto 10 sessions, no filter: p50 <= 1 ms", p50 <= 1, f"{p50:.2f} ms")
    nofilter = r.levels.get("no filter", {})
    for level, rs in sorted(nofilter.get("ours1", {}).items()):
        cpu = statistics.median(x.cpu_ms for x in rs)
        check(f"W1 {level} sessions: CPU <= 0.45 ms/msg", cpu <= 0.45, f"{cpu:.3f} ms")
        floor = nofilter.get("splice", {}).get(level)
        if floor:
            base = statistics.median(x.cpu_ms for x in floor)
            ratio = cpu / base if base else float("inf")
            check(
                f"W1 {level} sessions: CPU <= 1.5x the bare splice",
                ratio <= 1.5,
                f"{ratio:.2f}x ({base:.3f} ms)",
            )
    top = max(r.settings.levels)
    if "ours" in r.deliver:
        dv = r.deliver["ours"]
        ok = dv.delivered == dv.expected and not dv.client_errors
        check(f"Wauto {top} sessions: all delivered", ok, f"{dv.delivered}/{dv.expected}")
    rss = nofilter.get("ours", {}).get(top)
    if rss:
        kb = statistics.median(x.rss_kb for x in rss)
        lines.append(
            f"  [info] Wauto {top} sessions, no filter: RSS {kb / 1024:.1f} MB (all workers)"
        )
    if "no filter" in r.runs:
        ratio = median_ratio(r.runs["no filter"]["ours"], r.runs["no filter"]["C"])
        check("issue 7: 10 sessions, no filter >= 4x C", ratio >= 4, f"{ratio:.2f}x")
    if "metrics on" in r.runs and "no filter" in r.runs:
        on = statistics.median(x.rate for x in r.runs["metrics on"]["ours"])
        off = statistics.median(x.rate for x in r.runs["no filter"]["ours"])
        lines.append(
            f"  [info] metrics on: {on:.0f} msg/s, {off:.0f} without MetricsListen "
            f"({(on / off - 1) * 100:+.1f} %)"
        )
    if "cat" in r.runs:
        ratio = median_ratio(r.runs["cat"]["ours"], r.runs["cat"]["C"])
        check("issue 7: 10 sessions, cat >= 1.8x C", ratio >= 1.8, f"{ratio:.2f}x")
    if "ours" in r.big:
        g = r.big["ours"]["growth_kb"] / 1024
        check("issue 7: 50 MB message RSS growth <= 10 MB", g <= 10, f"{g:.1f} MB")
    if "ours" in r.idle:
        d = r.idle["ours"]
        ok = d["per_session_kb"] <= 25 and d["sessions"] >= 5000
        check("issue 7: 5,000 idle sessions, <= 25 KB each", ok, f"{d['per_session_kb']:.1f} KB")
    for name, want in (("milter", 3.0), ("dkim sign", 1.5)):
        if name in r.runs and "cat" in r.runs and "C" in r.runs["cat"]:
            ratio = median_ratio(r.runs[name]["ours"], r.runs["cat"]["C"])
            check(f"issue 14: {name} >= {want:g}x C's cat", ratio >= want, show_ratio(ratio))
    return lines


def ceiling(r: Results, scenario: str, level: int, want: float) -> list[str]:
    """Whether `want` x C at `level` sessions fits on this machine at all: the load
    generator (smtp-source + sink) shares the cores, so a proxy reaching the rate R may
    spend at most cores / R - load CPU per message.  Set against the bare Trio splice's
    CPU per message (the floor for Python on Trio), it says if any such proxy could."""
    by_impl = r.levels.get(scenario, {})
    c_runs = by_impl.get("C", {}).get(level)
    floor = by_impl.get("splice", {}).get(level)
    if not c_runs or not floor or any(x.died for x in c_runs):
        return []
    runs = [x for lv in by_impl.values() for x in lv.get(level, []) if x.load_ms]
    if not runs:
        return []
    goal = want * statistics.median(x.rate for x in c_runs)
    load_ms = statistics.median(x.load_ms for x in runs)
    cores = len(os.sched_getaffinity(0))
    budget = cores * 1e3 / goal - load_ms
    splice = statistics.median(x.cpu_ms for x in floor)
    ours = by_impl.get("ours1", {}).get(level)
    mine = f", ours W1 {statistics.median(x.cpu_ms for x in ours):.3f} ms" if ours else ""
    verdict = "out of reach even for the bare splice" if budget < splice else "within reach"
    return [
        f"  [info] {want:g}x C at {level} sessions, {scenario} = {goal:.0f} msg/s: on {cores} "
        f"cores, with the load generator at {load_ms:.3f} ms CPU/msg, a proxy may spend "
        f"{budget:.3f} ms/msg; the bare Trio splice spends {splice:.3f}{mine}: {verdict}"
    ]


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def auto_count() -> int:
    """What `Workers: auto` gives here (cores we may run on; MaxConnections is high)."""
    return len(os.sched_getaffinity(0)) if OUR_WORKERS == "auto" else int(OUR_WORKERS)


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
            rate, cpu_ms, _load = measure(proxy, front, s.warmup, s.window)
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
        return Run(
            rate,
            cpu_ms=cpu_ms,
            p50_ms=pct(alone, 0.5) * 1e3,
            p99_ms=pct(alone, 0.99) * 1e3,
            samples=len(alone),
        )
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
        for scenario in order(UPSTREAM_SCENARIOS, rnd):
            run = upstream_run(workdir, scenario, s, pem, certs.ca)
            runs.setdefault(scenario, []).append(run)
            progress(
                f"round {rnd + 1} {scenario}: {run.rate:.0f} msg/s, "
                f"CPU {run.cpu_ms:.3f} ms/msg, p50 {run.p50_ms:.2f} ms"
            )
    return runs


def upstream_report(runs: dict[str, list[Run]]) -> str:
    lines = ["", "Next server: TLS and PIPELINING (ours, pipelining clients, medians)"]
    base = statistics.median(r.rate for r in runs["lock-step"])
    base_cpu = statistics.median(r.cpu_ms for r in runs["lock-step"]) or 1.0
    for scenario, rs in runs.items():
        rate = statistics.median(r.rate for r in rs)
        p50 = statistics.median(r.p50_ms for r in rs)
        cpu = statistics.median(r.cpu_ms for r in rs)
        lines.append(
            f"  {scenario:<20} {rate:8.0f} msg/s ({rate / base:5.2f}x lock-step)"
            f"  CPU {cpu:.3f} ms/msg ({cpu / base_cpu:4.2f}x)  p50 {p50:6.2f} ms"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about three minutes")
    parser.add_argument(
        "--scenario", action="append", help="main part: only these scenarios (repeatable)"
    )
    parser.add_argument("--rounds", type=int, help="override the number of rounds (>= 1)")
    parser.add_argument("--only", choices=PARTS, action="append", help="run only this part")
    parser.add_argument(
        "--levels", help="comma-separated session counts for levels (default 10,50,200,500)"
    )
    parser.add_argument(
        "--workers", default="auto", help="Workers for 'ours' (auto or N; default auto)"
    )
    args = parser.parse_args()
    global OUR_WORKERS
    OUR_WORKERS = args.workers
    s = QUICK if args.quick else FULL
    if args.rounds:
        s.rounds = max(1, args.rounds)
    if args.levels:
        s.levels = tuple(int(x) for x in args.levels.split(","))
    for tool, name in ((SINK, "smtp-sink"), (SOURCE, "smtp-source"), (C_PROXY, "proxsmtpd")):
        if tool is None:
            sys.exit(f"{name} not found (Debian packages postfix and proxsmtp)")
    parts = set(args.only or DEFAULT_PARTS)
    raise_nofile(max(NOFILE, 2 * s.idle + 256))  # inherited by the proxies, sink and sources
    max_conn = 2 * max(s.levels) + 100
    r = Results(s)
    upstream: dict[str, list[Run]] = {}
    scanner_text = ""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="proxsmtp-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # smtp-sink runs as nobody; proxies run as us
        if "main" in parts:
            for rnd in range(s.rounds):
                for sc in MAIN_SCENARIOS:
                    if args.scenario and sc.name not in args.scenario:
                        continue
                    for impl in order(sc.impls(("ours", "C")), rnd):
                        run = one_run(
                            impl, workdir, sc, s.sessions, s.warmup, s.window,
                            latency=(s.latency_budget, s.latency_max),
                        )  # fmt: skip
                        r.runs.setdefault(sc.name, {}).setdefault(impl, []).append(run)
                        progress(f"round {rnd + 1} {sc.name} {impl}: {run.rate:.0f} msg/s")
                run = one_run("direct", workdir, MAIN_SCENARIOS[0], s.sessions, s.warmup, s.window)
                r.runs.setdefault("direct", {}).setdefault("direct", []).append(run)
                progress(f"round {rnd + 1} direct: {run.rate:.0f} msg/s")
        if "levels" in parts:
            # One level alone swings by +-20 % on a shared 2-core VM: rounds, medians, and the
            # order of the levels and of the implementations alternated from round to round.
            for rnd in range(s.rounds):
                for sc in LEVEL_SCENARIOS:
                    impls = ("ours1", "ours", "C") + (("splice",) if sc.name == "no filter" else ())
                    for level in order(s.levels, rnd):
                        for impl in order(sc.impls(impls), rnd):
                            run = one_run(
                                impl, workdir, sc, level, s.warmup, s.level_window,
                                max_conn=max_conn,
                            )  # fmt: skip
                            by_level = r.levels.setdefault(sc.name, {}).setdefault(impl, {})
                            by_level.setdefault(level, []).append(run)
                            progress(
                                f"round {rnd + 1} {sc.name} {level} sessions {impl}: "
                                f"{run.rate:.0f} msg/s, {run.cpu_ms:.3f} ms CPU/msg"
                                + (f", DIED: {run.died}" if run.died else "")
                            )
        if "deliver" in parts:
            for impl in ("ours", "ours1", "C"):
                d = deliver(impl, workdir, max(s.levels), s.deliver_per_session, max_conn)
                r.deliver[impl] = d
                progress(f"deliver {impl}: {d}")
        if "big" in parts:
            for impl in ("ours", "C"):
                r.big[impl] = big_message(impl, workdir, s.big_mb)
                progress(f"big {impl}: {r.big[impl]}")
        if "idle" in parts:
            for impl in ("ours", "C"):
                # C 1.10 uses select(): a descriptor above FD_SETSIZE (1024) aborts it, at
                # about 510 sessions (two descriptors each), so it gets C_IDLE sessions.
                count = s.idle if impl == "ours" else min(s.idle, C_IDLE)
                # One process (Workers 1): the memory of a session, not the spread of
                # accepts between workers (each holds only its share of MaxConnections).
                r.idle[impl] = idle_sessions("ours1" if impl == "ours" else impl, workdir, count)
                progress(f"idle {impl}: {r.idle[impl]}")
        if "scanners" in parts:
            from scanners import scanner_report, scanner_runs

            scanner_text = scanner_report(scanner_runs(sys.modules[__name__], workdir, s))
        if "upstream" in parts:
            if HAPROXY is None:
                sys.exit("haproxy not found (Debian package haproxy)")
            upstream = upstream_scenarios(workdir, s)
    text_out = report(r, time.monotonic() - started)
    if upstream:
        text_out += "\n" + upstream_report(upstream)
    if scanner_text:
        text_out += "\n" + scanner_text
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
        "workers": OUR_WORKERS,
        "runs": {n: {i: [vars(x) for x in rs] for i, rs in d.items()} for n, d in r.runs.items()},
        "levels": {
            n: {i: {lv: [vars(x) for x in rs] for lv, rs in by.items()} for i, by in d.items()}
            for n, d in r.levels.items()
        },
        "deliver": {i: vars(dv) for i, dv in r.deliver.items()},
        "big": r.big,
        "idle": r.idle,
    }


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
