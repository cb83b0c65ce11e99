"""The scanner comparison of bench/run.py (``--only scanners``, issue 22).

The same clamd and spamd, started per run from temporary configs (clamd with a one-line
signature database, on a unix socket so that clamdscan can pass the file descriptor;
spamd on a loopback port, ``-L``, 5 children), reached two ways by ours (Workers as for
the main part) at 10 and 50 smtp-source sessions:

- shell: ``contrib/filters/clamav.sh`` (FilterType: file, clamdscan --fdpass) or
  ``contrib/filters/spamassassin.sh`` (pipe, spamc), as shipped.  clamdscan and spamc
  have no option for another daemon than the system's, so PATH starts with a directory of
  two one-line shims (``exec clamdscan --config-file=...``, ``exec spamc -d ... -p ...``):
  one exec more per message for the shell path.
- native: ``Scanners: clamd:unix:...`` / ``Scanners: spamd:inet:...``.

Reported per case: messages/s at the sink, the proxy's CPU per message (its processes and
the filters it reaped: utime + stime + cutime + cstime), the scanner daemon's CPU per
message (its process tree), and the p50 of final dot -> reply on one session alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

LEVELS = (10, 50)
SIGNATURE = "Bench-Test-Signature:0:*:" + b"trio-proxsmtp bench signature, never in a message".hex()
_PATH = "/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")


def _which(name: str) -> str:
    found = shutil.which(name, path=_PATH)
    if found is None:
        raise SystemExit(
            f"{name} not found (Debian packages clamav-daemon, clamdscan, spamd, spamc)"
        )
    return found


def tree_cpu(bench: ModuleType, pid: int) -> float:
    """CPU seconds of `pid`, its reaped children and its live descendants."""
    total = 0.0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        with contextlib.suppress(OSError):
            fields = bench.proc_stat(current)
            total += sum(int(x) for x in fields[11:15]) / bench.CLOCK_TICKS
        pending.extend(bench.children(current))
    return total


@contextlib.contextmanager
def clamd(bench: ModuleType, workdir: Path) -> Iterator[dict[str, Any]]:
    root = workdir / f"clamd-{bench.free_port()}"
    (root / "db").mkdir(parents=True)
    (root / "db" / "bench.ndb").write_text(SIGNATURE + "\n")
    sock = root / "clamd.sock"
    conf = root / "clamd.conf"
    conf.write_text(
        f"Foreground yes\nLocalSocket {sock}\nDatabaseDirectory {root / 'db'}\n"
        f"LogFile {root / 'clamd.log'}\nUser root\nMaxThreads 20\n"
    )
    proc = subprocess.Popen(
        [_which("clamd"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"clamd did not start: {(root / 'clamd.log').read_text()}")
            time.sleep(0.1)
        shim = root / "bin"
        shim.mkdir()
        (shim / "clamdscan").write_text(
            f'#!/bin/sh\nexec {_which("clamdscan")} --config-file={conf} "$@"\n'
        )
        (shim / "clamdscan").chmod(0o755)
        yield {"pid": proc.pid, "address": f"unix:{sock}", "shims": str(shim)}
    finally:
        bench.stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def spamd(bench: ModuleType, workdir: Path) -> Iterator[dict[str, Any]]:
    port = bench.free_port()
    root = workdir / f"spamd-{port}"
    root.mkdir()
    argv = [_which("spamd"), "-L", "-x", "--listen", f"127.0.0.1:{port}", "--max-children", "5"]
    argv += ["--min-children", "5", "--pidfile", str(root / "pid"), "-s", "stderr"]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        bench.wait_listening(port, proc, timeout=60)
        shim = root / "bin"
        shim.mkdir()
        (shim / "spamc").write_text(
            f'#!/bin/sh\nexec {_which("spamc")} -d 127.0.0.1 -p {port} "$@"\n'
        )
        (shim / "spamc").chmod(0o755)
        yield {"pid": proc.pid, "address": f"inet:127.0.0.1:{port}", "shims": str(shim)}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        bench.stop(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


CASES = (
    ("clamd", "shell", "FilterType: file\nFilterCommand: {contrib}/clamav.sh\n"),
    ("clamd", "native", "Scanners: clamd:{address}\n"),
    ("spamd", "shell", "FilterCommand: {contrib}/spamassassin.sh\n"),
    ("spamd", "native", "Scanners: spamd:{address}\n"),
)


def one(bench: ModuleType, workdir: Path, s: Any, scanner: str, way: str, config: str,
        sessions: int) -> dict[str, float]:  # fmt: skip
    daemon = clamd if scanner == "clamd" else spamd
    with daemon(bench, workdir) as info:
        text = config.replace("{contrib}", str(bench.REPO / "contrib" / "filters"))
        text = text.replace("{address}", info["address"])
        bench.PATH_PREFIX[:] = [info["shims"]] if way == "shell" else []
        sink = bench.Sink(workdir)
        proxy = bench.Proxy("ours", workdir, sink.port, text, 256)
        try:
            # Long windows: the machine is shared; spamd takes ~0.1 s of CPU a message.
            warmup, window = (2, 6) if scanner == "clamd" else (5, 10)
            with bench.load(proxy.port, sessions):
                time.sleep(warmup)
                cpu0, scan0 = _proxy_cpu(bench, proxy), tree_cpu(bench, info["pid"])
                c0, t0 = sink.count(), time.monotonic()
                time.sleep(window)
                c1, t1 = sink.count(), time.monotonic()
                cpu1, scan1 = _proxy_cpu(bench, proxy), tree_cpu(bench, info["pid"])
            messages = max(1, c1 - c0)
            _wait_idle(bench, info["pid"])  # the scans of the sessions cut at the end
            lat = bench.latencies(proxy.port, s.latency_budget, s.latency_max)
            return {
                "rate": (c1 - c0) / (t1 - t0),
                "cpu_ms": (cpu1 - cpu0) * 1e3 / messages,
                "scanner_cpu_ms": (scan1 - scan0) * 1e3 / messages,
                "p50_ms": bench.pct(lat, 0.5) * 1e3 if lat else 0.0,
                "alive": float(proxy.alive()),
            }
        finally:
            bench.PATH_PREFIX[:] = []
            proxy.close()
            sink.close()


def _wait_idle(bench: ModuleType, pid: int, most: float = 30.0) -> None:
    """Until the scanner's process tree uses under 5 % of a core (at most `most` s)."""
    end = time.monotonic() + most
    before = tree_cpu(bench, pid)
    while time.monotonic() < end:
        time.sleep(0.5)
        now = tree_cpu(bench, pid)
        if now - before < 0.025:
            return
        before = now


def _proxy_cpu(bench: ModuleType, proxy: Any) -> float:
    total = 0.0
    for pid in proxy.pids():
        with contextlib.suppress(OSError):
            fields = bench.proc_stat(pid)
            total += sum(int(x) for x in fields[11:15]) / bench.CLOCK_TICKS
    return total


Runs = dict[tuple[str, str, int], list[dict[str, float]]]


def scanner_runs(bench: ModuleType, workdir: Path, s: Any) -> Runs:
    runs: Runs = {}
    for rnd in range(s.rounds):
        for scanner, way, config in bench.order(CASES, rnd):
            for sessions in bench.order(LEVELS, rnd):
                result = one(bench, workdir, s, scanner, way, config, sessions)
                runs.setdefault((scanner, way, sessions), []).append(result)
                bench.progress(
                    f"round {rnd + 1} {scanner} {way} {sessions} sessions: "
                    f"{result['rate']:.0f} msg/s, {result['cpu_ms']:.2f} ms CPU/msg, "
                    f"{scanner} {result['scanner_cpu_ms']:.2f} ms/msg, "
                    f"p50 {result['p50_ms']:.1f} ms"
                )
    return runs


CORES = os.cpu_count() or 1


def _capacity(m: dict[str, float]) -> float:
    spent = m["cpu_ms"] + m["scanner_cpu_ms"]
    return CORES * 1e3 / spent if spent else 0.0


def scanner_report(runs: Runs) -> str:
    lines = [
        "",
        "Scanners (issue 22, ours): contrib shell filters vs Scanners:, same daemons, medians",
        f"  {'scanner':<7} {'way':<7} {'sessions':>8} {'msg/s':>8} {'native/shell':>12} "
        f"{'proxy CPU ms/msg':>17} {'scanner CPU ms/msg':>19} {'p50 ms':>7} "
        f"{'CPU-bound msg/s':>15}",
    ]
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    for (scanner, way, sessions), m in sorted(med.items()):
        shell = med.get((scanner, "shell", sessions))
        ratio = (
            f"{m['rate'] / shell['rate']:.2f}x"
            if way == "native" and shell and shell["rate"]
            else ""
        )
        lines.append(
            f"  {scanner:<7} {way:<7} {sessions:>8} {m['rate']:>8.0f} {ratio:>12} "
            f"{m['cpu_ms']:>17.2f} {m['scanner_cpu_ms']:>19.2f} {m['p50_ms']:>7.1f} "
            f"{_capacity(m):>15.0f}"
        )
    lines.append(
        f"  CPU-bound msg/s: what {CORES} cores give at the proxy's and the scanner's CPU per "
        "message (their sum): on a shared machine the measured rate follows the other load"
    )
    return "\n".join(lines)
