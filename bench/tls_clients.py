"""Client-side STARTTLS against plain text, and new TLS sessions/s (issue 26).

    python bench/tls_clients.py                        # about 3 minutes
    python bench/tls_clients.py --sessions 200 --rounds 4 --workers 1
    python bench/tls_clients.py --tree OTHER_CHECKOUT  # the same load on another tree
    python bench/tls_clients.py --tree BEFORE --tree AFTER --workers 1  # alternated, AFTER/BEFORE
    python bench/tls_clients.py --impl "/other/venv/bin/python -m trio_proxsmtp"

smtp-source cannot say STARTTLS, so this script brings its own load generator: N lock-step
SMTP sessions (EHLO, [STARTTLS, EHLO], then per message MAIL, RCPT, DATA, the message and
its final dot, each waiting for its reply; QUIT at the end), spread over two processes,
each a non-blocking selector loop over plain `socket`/`ssl` objects (standard library only),
so that it costs little per message; its own CPU is measured and printed ("gen").

Our daemon (``python -m trio_proxsmtp``, a temp config with TLSCertificate/TLSKey, Workers
1 and/or auto) runs in front of smtp-sink, as bench/run.py runs it (a fresh proxy and sink
per measurement).  Two parts, in one sitting, the order of the levels, the Workers and the
modes alternated from round to round:

- messages: plain against STARTTLS at each --sessions level: msg/s counted at the sink,
  the proxy's process-tree CPU (utime + stime) per message, p50/p99 of the final dot's
  reply as the load's sessions saw it, and TLS/plain for rate and CPU (medians of the
  per-round ratios).  Issue 26's target: STARTTLS costs at most 25 % of the plain rate.
- handshakes: new sessions per second (connect, EHLO, [STARTTLS, EHLO], QUIT; no message)
  with --hs-sessions of them at a time: plain, TLS 1.3 and TLS 1.2, the proxy's CPU per
  new session (it connects to the sink for each one as well, in every mode).

Results go to stdout and to bench/results/tls-<UTC stamp>.txt and .json (or --json FILE).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import selectors
import shlex
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import run  # bench/run.py, next to this file

if TYPE_CHECKING:  # the load's processes import no Trio
    from trio_proxsmtp.testing.certs import TestCertificates

GEN_PROCESSES = 2
MSG_SIZE = 4096
TARGET = 0.75  # issue 26: STARTTLS at most 25 % below the plain rate
EHLO = b"EHLO bench.example\r\n"
MAIL = b"MAIL FROM:<from@example.org>\r\n"
RCPT = b"RCPT TO:<to@example.net>\r\n"
TLS = object()  # a script's request: do the TLS handshake now
READY = object()  # a script's report: set up, wait for "go"

# ---------------------------------------------------------------- the load generator (worker)


class Stopping:
    stop = False


Script = Generator[object, bytes | None, None]


def expect(reply: bytes | None, code: bytes) -> None:
    if reply is None or not reply.startswith(code):
        raise RuntimeError(f"expected {code.decode()}, got {reply!r}")


def greet(tls: bool) -> Script:
    """Banner, EHLO, and STARTTLS with the second EHLO when `tls`."""
    expect((yield None), b"220")
    expect((yield EHLO), b"250")
    if tls:
        expect((yield b"STARTTLS\r\n"), b"220")
        yield TLS
        expect((yield EHLO), b"250")


def messages_script(
    tls: bool, count: int, body: bytes, flag: Stopping, done: list[tuple[float, float]]
) -> Script:
    """One session: `count` messages (0: until stopped), each (end, final dot -> reply)."""
    yield from greet(tls)
    yield READY
    sent = 0
    while not flag.stop and (not count or sent < count):
        expect((yield MAIL), b"250")
        expect((yield RCPT), b"250")
        expect((yield b"DATA\r\n"), b"354")
        t0 = time.monotonic()
        expect((yield body), b"250")
        t1 = time.monotonic()
        done.append((t1, t1 - t0))
        sent += 1
    expect((yield b"QUIT\r\n"), b"221")


def handshake_script(tls: bool, start: float, done: list[tuple[float, float]]) -> Script:
    """One short session, no message: (end, seconds from `start`, before connecting)."""
    yield from greet(tls)
    expect((yield b"QUIT\r\n"), b"221")
    end = time.monotonic()
    done.append((end, end - start))


class Conn:
    __slots__ = ("buf", "events", "pending", "script", "shaking", "sock")

    def __init__(self, sock: socket.socket, script: Script) -> None:
        self.sock, self.script = sock, script
        self.buf = self.pending = b""
        self.shaking = False
        self.events = selectors.EVENT_READ


class Worker:
    """One process of the load: a selector loop over its sessions, told "go" and "stop"
    on stdin; prints "ready" when every session is set up, its results (JSON) at the end."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.port, self.sessions, self.limit = cfg["port"], cfg["sessions"], cfg["messages"]
        self.tls = bool(cfg["tls"])
        self.ctx = ssl.create_default_context(cafile=cfg["ca"])
        if cfg["tls12"]:
            self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        self.body = run.text(cfg["size"]) + b".\r\n"
        self.sel = selectors.DefaultSelector()
        self.flag = Stopping()
        self.done: list[tuple[float, float]] = []
        self.live = self.opened = self.lost = 0
        self.waiting: list[Conn] = []
        self.errors: list[str] = []
        self.going = False
        self.slowest_connect = 0.0  # a second or more: a SYN was retransmitted
        self.session: ssl.SSLSession | None = None  # the last one, offered when resuming
        self.resumed = 0

    def script(self, start: float) -> Script:
        if self.cfg["part"] == "handshakes":
            return handshake_script(self.tls, start, self.done)
        return messages_script(self.tls, self.limit, self.body, self.flag, self.done)

    def open(self) -> None:
        start = time.monotonic()
        sock = socket.create_connection((run.HOST, self.port), timeout=30)
        self.slowest_connect = max(self.slowest_connect, time.monotonic() - start)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = Conn(sock, self.script(start))
        self.sel.register(sock, selectors.EVENT_READ, conn)
        self.live += 1
        self.opened += 1
        self.advance(conn, None)

    def may_open(self) -> bool:
        """Handshake part: another session in this slot?"""
        if self.flag.stop or self.cfg["part"] != "handshakes":
            return False
        return not self.limit or self.opened < self.limit * self.sessions

    def close(self, conn: Conn) -> None:
        if conn.sock.fileno() < 0:
            return  # closed already
        if isinstance(conn.sock, ssl.SSLSocket) and not conn.shaking:
            self.resumed += conn.sock.session_reused
            if self.cfg.get("resume"):
                self.session = conn.sock.session  # TLS 1.3: its ticket came after the handshake
        self.sel.unregister(conn.sock)
        conn.sock.close()
        self.live -= 1
        if not self.going:  # a session that failed to set up: the others are ready
            self.lost += 1
            self.check_ready()
        if self.may_open():
            self.open()

    def check_ready(self) -> None:
        if len(self.waiting) + self.lost == self.sessions:
            self.say("ready")

    def want(self, conn: Conn, events: int) -> None:
        if conn.events != events:
            conn.events = events
            self.sel.modify(conn.sock, events, conn)

    def advance(self, conn: Conn, reply: bytes | None) -> None:
        try:
            action = conn.script.send(reply)
        except StopIteration:
            self.close(conn)
            return
        except RuntimeError as exc:
            self.errors.append(str(exc))
            self.close(conn)
            return
        if isinstance(action, bytes):
            self.send(conn, action)
        elif action is TLS:
            self.sel.unregister(conn.sock)
            conn.sock = self.ctx.wrap_socket(
                conn.sock,
                server_hostname="localhost",
                do_handshake_on_connect=False,
                session=self.session,
            )
            self.sel.register(conn.sock, conn.events, conn)
            conn.shaking = True
            self.handshake(conn)
        elif action is READY:
            self.waiting.append(conn)
            self.check_ready()

    def send(self, conn: Conn, data: bytes) -> None:
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0  # ssl: the same bytes again later
        conn.pending = data[sent:]
        self.want(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.pending else 0))

    def handshake(self, conn: Conn) -> None:
        try:
            conn.sock.do_handshake()  # type: ignore[attr-defined]
        except ssl.SSLWantReadError:
            self.want(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self.want(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
            return
        conn.shaking = False
        self.want(conn, selectors.EVENT_READ)
        self.advance(conn, None)

    def receive(self, conn: Conn) -> None:
        sock = conn.sock
        try:
            data = sock.recv(65536)
            while isinstance(sock, ssl.SSLSocket) and sock.pending():
                data += sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return  # ssl: a record without data for us (a session ticket)
        if not data:
            raise ConnectionError("the proxy closed the connection")
        buf = conn.buf + data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if buf[start + 3 : start + 4] != b"-":
                conn.buf = buf[end + 1 :]
                self.advance(conn, buf[start : end + 1])
                return
            start = end + 1
        conn.buf = buf

    def command(self) -> None:
        data = os.read(0, 4096)
        if b"go" in data and not self.going:
            self.going = True
            waiting, self.waiting = self.waiting, []
            for conn in waiting:
                self.advance(conn, None)
            if self.cfg["part"] == "handshakes":
                for _ in range(self.sessions):
                    self.open()
        if b"stop" in data or not data:
            self.flag.stop = True
            self.sel.unregister(0)

    def say(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def main(self) -> None:
        self.sel.register(0, selectors.EVENT_READ, None)
        if self.cfg["part"] == "messages":
            for _ in range(self.sessions):
                self.open()
        else:
            self.say("ready")
        while self.live or not (self.flag.stop or (self.going and not self.may_open())):
            for key, events in self.sel.select(30):
                conn = key.data
                if conn is None:
                    self.command()
                    continue
                try:
                    if conn.shaking:
                        self.handshake(conn)
                    elif events & selectors.EVENT_WRITE and conn.pending:
                        self.send(conn, conn.pending)
                    elif events & selectors.EVENT_READ:
                        self.receive(conn)
                except (OSError, ssl.SSLError) as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    self.close(conn)
        times = os.times()
        self.say(
            json.dumps(
                {
                    "done": self.done,
                    "errors": len(self.errors),
                    "first_error": self.errors[0] if self.errors else "",
                    "cpu": times.user + times.system,
                    "slowest_connect": self.slowest_connect,
                    "resumed": self.resumed,
                }
            )
        )


# ---------------------------------------------------------------- the load, from the parent


class Load:
    """GEN_PROCESSES worker processes sharing `sessions` between them."""

    def __init__(self, port: int, sessions: int, **cfg: object) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        shares = [
            sessions // GEN_PROCESSES + (i < sessions % GEN_PROCESSES) for i in range(GEN_PROCESSES)
        ]
        for share in filter(None, shares):
            args = json.dumps(dict(cfg, port=port, sessions=share))
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--worker", args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def tell(self, word: bytes) -> None:
        for p in self.procs:
            assert p.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                p.stdin.write(word + b"\n")
                p.stdin.flush()

    @staticmethod
    def line(p: subprocess.Popen[bytes], timeout: float) -> bytes:
        """The next line `p` prints, or a RuntimeError after `timeout` seconds."""
        assert p.stdout is not None
        if not select.select([p.stdout], [], [], timeout)[0]:
            raise RuntimeError(f"load process {p.pid}: nothing in {timeout:g} s")
        return p.stdout.readline()

    def ready(self) -> None:
        for p in self.procs:
            if self.line(p, 60).strip() != b"ready":
                raise RuntimeError(f"load process {p.pid} failed to set up (exit {p.poll()})")

    def results(self, stop: bool) -> list[dict[str, Any]]:
        """Each process's report (after telling it to stop, or once it is done)."""
        if stop:
            self.tell(b"stop")
        out = []
        for p in self.procs:
            line = self.line(p, 120)
            if not line:
                raise RuntimeError(f"load process {p.pid} failed (exit {p.wait(5)})")
            out.append(json.loads(line))
        for p in self.procs:
            p.wait(10)
        return out

    def close(self) -> None:
        for p in self.procs:
            run.stop(p, 9)


# ---------------------------------------------------------------- measurements


@dataclass
class Settings:
    sessions: tuple[int, ...] = (10, 50, 200)
    rounds: int = 2
    warmup: float = 1.0
    seconds: float = 2.5
    messages: int = 0  # per session (handshake part: sessions per slot); 0: --seconds
    workers: tuple[str, ...] = ("1", "auto")
    hs_sessions: int = 10
    tls12: bool = False
    size: int = MSG_SIZE
    parts: tuple[str, ...] = ("messages", "handshakes")
    trees: tuple[str, ...] = ()  # checkouts to run ours from, alternated; empty: run.REPO
    resumed: bool = False  # handshakes: the client resumes its last session, TLS 1.3 and 1.2


def variants(s: Settings) -> list[tuple[str, Path, str]]:
    """(label, tree, Workers) for each tree and Workers value; the label is the Workers
    value alone with one tree, else "TREE:WORKERS" (the trees' names, or t1, t2...)."""
    trees = [Path(x).resolve() for x in s.trees] or [run.REPO]
    names = [x.name for x in trees]
    if len(set(names)) < len(names):
        names = [f"t{i + 1}" for i in range(len(trees))]
    return [
        (w if len(trees) == 1 else f"{name}:{w}", tree, w)
        for name, tree in zip(names, trees, strict=True)
        for w in s.workers
    ]


@dataclass
class Result:
    rate: float  # msg/s (handshakes: new sessions/s)
    cpu_ms: float  # the proxy's process tree, per message (per session)
    gen_ms: float  # the load generator, per message (per session)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    first_error: str = ""
    died: str = ""
    slowest_connect_ms: float = 0.0
    count: int = 0  # messages at the sink (handshakes: sessions done) in the window
    resumed: int = 0  # TLS sessions the proxy resumed (all of the run's, not the window's)


@contextlib.contextmanager
def daemon(
    workdir: Path, workers: str, certs: TestCertificates, max_conn: int
) -> Iterator[tuple[run.Proxy, run.Sink]]:
    """smtp-sink and ours in front of it with STARTTLS offered; stopped by pid after."""
    run.OUR_WORKERS = workers
    sink = run.Sink(workdir)
    extra = f"TLSCertificate: {certs.certificate}\nTLSKey: {certs.key}\n"
    impl = "ours1" if workers == "1" else "ours"
    try:
        proxy = run.Proxy(impl, workdir, sink.port, extra, max_conn)
    except BaseException:
        sink.close()
        raise
    try:
        yield proxy, sink
    finally:
        proxy.close()
        sink.close()


def one(
    part: str,
    mode: str,
    level: int,
    tree: Path,
    workers: str,
    s: Settings,
    workdir: Path,
    certs: TestCertificates,
) -> Result:
    """One measurement on a fresh proxy and sink: `mode` is plain, STARTTLS, TLS 1.3/1.2."""
    run.REPO = tree  # Proxy puts it on PYTHONPATH
    max_conn = 2 * max((*s.sessions, s.hs_sessions)) + 100
    ca = certs.ca
    with daemon(workdir, workers, certs, max_conn) as (proxy, sink):
        tls12 = mode.startswith("TLS 1.2") or (mode == "STARTTLS" and s.tls12)
        load = Load(proxy.port, level, part=part, tls=mode != "plain", tls12=tls12,
                    resume=mode.endswith("resumed"), messages=s.messages, size=s.size,
                    ca=str(ca))  # fmt: skip
        try:
            load.ready()
            count0, cpu0, gen0 = sink.count(), proxy.cpu_seconds(), run.cpu_of(load.pids)
            load.tell(b"go")
            t0 = time.monotonic()
            if not s.messages:
                time.sleep(s.warmup)
                count0, cpu0, gen0 = sink.count(), proxy.cpu_seconds(), run.cpu_of(load.pids)
                t0 = time.monotonic()
                time.sleep(s.seconds)
                t1 = time.monotonic()
                count1, cpu1, gen1 = sink.count(), proxy.cpu_seconds(), run.cpu_of(load.pids)
                reports = load.results(stop=True)
            else:  # each process reports once its sessions are done
                reports = load.results(stop=False)
                t1 = time.monotonic()
                count1, cpu1 = sink.count(), proxy.cpu_seconds()
                gen1 = sum(r["cpu"] for r in reports)  # they are gone: their own account
        finally:
            load.close()
        errors = sum(r["errors"] for r in reports)
        first = next((str(r["first_error"]) for r in reports if r["first_error"]), "")
        died = "" if proxy.alive() else proxy.death()
        done = [(end, d) for r in reports for end, d in r["done"]]
        if part == "messages":
            if s.messages:  # every message was answered 250: wait for the sink's counter
                deadline = time.monotonic() + 2
                while sink.count() - count0 < len(done) and time.monotonic() < deadline:
                    time.sleep(0.02)
                count1 = sink.count()
            n = count1 - count0
        lat = [d for end, d in done if t0 <= end <= t1] or [d for _, d in done]
        if part == "handshakes":  # new sessions counted by the load: the sink sees no message
            n = sum(1 for end, _ in done if t0 <= end <= t1)
    per = 1e3 / n if n else 0.0
    return Result(
        n / (t1 - t0),
        (cpu1 - cpu0) * per,
        (gen1 - gen0) * per,
        run.pct(lat, 0.5) * 1e3 if lat else 0.0,
        run.pct(lat, 0.99) * 1e3 if lat else 0.0,
        errors,
        first,
        died,
        max(r["slowest_connect"] for r in reports) * 1e3,
        n,
        sum(r["resumed"] for r in reports),
    )


@dataclass
class Sitting:
    settings: Settings
    # part -> variant (Workers, or TREE:WORKERS) -> level -> mode -> every round
    runs: dict[str, dict[str, dict[int, dict[str, list[Result]]]]] = field(default_factory=dict)


MODES = {"messages": ("plain", "STARTTLS"), "handshakes": ("plain", "TLS 1.3", "TLS 1.2")}
RESUMED = ("TLS 1.3 resumed", "TLS 1.2 resumed")  # --resumed: the client offers its last session


def sitting(s: Settings, workdir: Path) -> Sitting:
    from trio_proxsmtp.testing.certs import make_test_certificates

    certs = make_test_certificates(workdir / "certs")
    out = Sitting(s)
    for rnd in range(s.rounds):
        for part in s.parts:
            levels = s.sessions if part == "messages" else (s.hs_sessions,)
            for level in run.order(levels, rnd):
                for label, tree, workers in run.order(tuple(variants(s)), rnd):
                    modes = MODES[part] + (RESUMED if s.resumed and part == "handshakes" else ())
                    for mode in run.order(modes, rnd):
                        r = one(part, mode, level, tree, workers, s, workdir, certs)
                        by = out.runs.setdefault(part, {}).setdefault(label, {})
                        by.setdefault(level, {}).setdefault(mode, []).append(r)
                        unit = "msg" if part == "messages" else "session"
                        run.progress(
                            f"round {rnd + 1} {part} {label} {level} {mode}: {r.rate:.0f} "
                            f"{unit}/s, {r.cpu_ms:.3f} ms CPU/{unit}, gen {r.gen_ms:.3f} ms"
                            + (f", {r.errors} errors ({r.first_error})" if r.errors else "")
                            + (f", DIED: {r.died}" if r.died else "")
                            + (f", p99 {r.p99_ms:.0f} ms" if r.p99_ms > 500 else "")
                            + (
                                f", a connect took {r.slowest_connect_ms:.0f} ms"
                                if r.slowest_connect_ms > 500
                                else ""
                            )
                        )
    return out


# ---------------------------------------------------------------- report


def med(rs: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in rs)


def ratio(tls: list[Result], plain: list[Result], attr: str) -> float:
    """Median of the per-round ratios TLS/plain."""
    pairs = [
        getattr(t, attr) / getattr(p, attr)
        for t, p in zip(tls, plain, strict=True)
        if getattr(p, attr)
    ]
    return statistics.median(pairs) if pairs else 0.0


def report(out: Sitting, elapsed: float) -> str:
    s = out.settings
    load = Path("/proc/loadavg").read_text().split()[:3]
    lines = [
        f"client-side STARTTLS (issue 26) — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"{len(os.sched_getaffinity(0))} cores shared by the load ({GEN_PROCESSES} processes), "
        f"the proxy and smtp-sink; load average {' '.join(load)} at the end",
        f"{s.rounds} rounds, order alternated; medians; "
        + (f"{s.messages} per session" if s.messages else f"{s.seconds:g} s after {s.warmup:g} s")
        + f"; {s.size}-byte messages; STARTTLS offers "
        + ("TLS 1.2 only" if s.tls12 else "TLS 1.3"),
    ]
    width = max(4, *(len(label) for label, _, _ in variants(s)))
    msgs = out.runs.get("messages", {})
    if msgs:
        lines += [
            "",
            "messages: msg/s at the sink; CPU = the proxy's process tree per message; p50/p99 = "
            "final dot -> reply; gen = the load generator's CPU per message",
            f"{'W':>{width}} {'sess':>5} {'mode':<9} {'msg/s':>7} {'CPU ms':>7} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'gen ms':>7} {'TLS/plain rate':>15} {'CPU':>6}",
        ]
    targets = []
    for workers, by in msgs.items():
        for level in s.sessions:
            modes = by.get(level, {})
            for mode, rs in modes.items():
                extra = ""
                if mode != "plain" and "plain" in modes:
                    rate = ratio(rs, modes["plain"], "rate")
                    cpu = ratio(rs, modes["plain"], "cpu_ms")
                    extra = f" {rate:14.2f}x {cpu:5.2f}x"
                    ok = "met" if rate >= TARGET else "MISSED"
                    targets.append(
                        f"  [{ok}] Workers {workers}, {level} sessions: STARTTLS rate >= "
                        f"{TARGET:g}x plain: {rate:.2f}x (CPU per message {cpu:.2f}x)"
                    )
                lines.append(
                    f"{workers:>{width}} {level:>5} {mode:<9} {med(rs, 'rate'):7.0f} "
                    f"{med(rs, 'cpu_ms'):7.3f} {med(rs, 'p50_ms'):7.2f} {med(rs, 'p99_ms'):7.2f} "
                    f"{med(rs, 'gen_ms'):7.3f}{extra}" + problems(rs)
                )
    hs = out.runs.get("handshakes", {})
    mw = 15 if s.resumed else 9
    if hs:
        lines += [
            "",
            f"new sessions/s, {s.hs_sessions} at a time (connect, EHLO, [STARTTLS, EHLO], QUIT); "
            "CPU = the proxy's per new session (its connection to the sink included); p50/p99 = "
            "connect -> 221",
            f"{'W':>{width}} {'mode':<{mw}} {'sess/s':>7} {'CPU ms':>7} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'gen ms':>7} {'/plain rate':>12} {'CPU':>6} {'TLS CPU ms':>11}",
        ]
    for workers, by in hs.items():
        modes = by.get(s.hs_sessions, {})
        for mode, rs in modes.items():
            extra = ""
            if mode != "plain" and "plain" in modes:
                rate = ratio(rs, modes["plain"], "rate")
                cpu = ratio(rs, modes["plain"], "cpu_ms")
                tls_ms = med(rs, "cpu_ms") - med(modes["plain"], "cpu_ms")
                extra = f" {rate:11.2f}x {cpu:5.2f}x {tls_ms:11.3f}"
            lines.append(
                f"{workers:>{width}} {mode:<{mw}} {med(rs, 'rate'):7.0f} {med(rs, 'cpu_ms'):7.3f} "
                f"{med(rs, 'p50_ms'):7.2f} {med(rs, 'p99_ms'):7.2f} {med(rs, 'gen_ms'):7.3f}{extra}"
                + (f"  resumed {sum(r.resumed for r in rs)}" if mode.endswith("resumed") else "")
                + problems(rs)
            )
    lines += trees_compared(out)
    if targets:
        lines += ["", "targets (issue 26):", *targets]
    lines += ["", f"total time {elapsed:.0f} s"]
    return "\n".join(lines)


def trees_compared(out: Sitting) -> list[str]:
    """With several trees: each tree against the first, median of the per-round ratios."""
    s = out.settings
    if len(s.trees) < 2:
        return []
    labels = variants(s)
    lines = ["", f"trees against {labels[0][1]} (median of the per-round ratios):"]
    for part, by in out.runs.items():
        levels = s.sessions if part == "messages" else (s.hs_sessions,)
        first = {workers: label for label, _, workers in labels[: len(s.workers)]}
        for label, _, workers in labels[len(s.workers) :]:
            base = by.get(first[workers], {})
            for level in levels:
                for mode, rs in by.get(label, {}).get(level, {}).items():
                    old = base.get(level, {}).get(mode)
                    if old:
                        lines.append(
                            f"  {part} {label} {level} {mode}: rate {ratio(rs, old, 'rate'):.2f}x,"
                            f" CPU {ratio(rs, old, 'cpu_ms'):.2f}x"
                        )
    return lines


def problems(rs: list[Result]) -> str:
    errors = sum(r.errors for r in rs)
    deaths = [r.died for r in rs if r.died]
    first = next((r.first_error for r in rs if r.first_error), "")
    slow = max(r.slowest_connect_ms for r in rs)
    return (
        (f"  {errors} client errors ({first[:60]})" if errors else "")
        + (f"  DIED: {deaths[0]}" if deaths else "")
        + (f"  a connect took {slow:.0f} ms" if slow > 500 else "")
    )


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sessions", default="10,50,200", help="levels (default 10,50,200)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.5, help="window after the warm-up")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--messages", type=int, default=0, help="per session instead of --seconds (handshakes: "
        "sessions per slot)"
    )  # fmt: skip
    parser.add_argument("--workers", default="1,auto", help="1, auto, or both: 1,auto")
    parser.add_argument("--hs-sessions", type=int, default=10, help="handshakes at a time")
    parser.add_argument("--tls12", action="store_true", help="STARTTLS runs offer TLS 1.2 only")
    parser.add_argument(
        "--resumed", action="store_true", help="handshakes: also resumed TLS 1.3 and 1.2"
    )
    parser.add_argument("--size", type=int, default=MSG_SIZE, help="message bytes")
    parser.add_argument("--only", choices=("messages", "handshakes"))
    parser.add_argument(
        "--tree", action="append", default=[], help="run ours from this checkout (PYTHONPATH); "
        "twice or more: the trees alternated in one sitting, each against the first"
    )  # fmt: skip
    parser.add_argument(
        "--impl", help='the command that starts the proxy, e.g. "python3 -m trio_proxsmtp"'
    )
    parser.add_argument("--json", type=Path, help="write the results here (not bench/results)")
    args = parser.parse_args()
    if args.worker:
        Worker(json.loads(args.worker)).main()
        return
    if run.SINK is None:
        sys.exit("smtp-sink not found (Debian package postfix)")
    if args.impl:
        run.OURS_COMMAND = shlex.split(args.impl)
    s = Settings(
        sessions=tuple(int(x) for x in args.sessions.split(",")),
        rounds=max(1, args.rounds),
        warmup=args.warmup,
        seconds=args.seconds,
        messages=args.messages,
        workers=tuple(args.workers.split(",")),
        hs_sessions=args.hs_sessions,
        tls12=args.tls12,
        size=args.size,
        parts=(args.only,) if args.only else ("messages", "handshakes"),
        trees=tuple(args.tree),
        resumed=args.resumed,
    )
    run.raise_nofile(run.NOFILE)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="proxsmtp-tlsbench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # smtp-sink runs as nobody
        out = sitting(s, workdir)
    text_out = report(out, time.monotonic() - started)
    print(text_out)
    data = {"settings": asdict(s), "runs": out.runs, "impl": args.impl}
    blob = json.dumps(data, default=asdict, indent=1) + "\n"
    if args.json:
        args.json.write_text(blob)
        return
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    stamp = "tls-" + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    (results / f"{stamp}.txt").write_text(text_out + "\n")
    (results / f"{stamp}.json").write_text(blob)
    print(f"\nwritten to {results / stamp}.txt and .json")


if __name__ == "__main__":
    main()
