"""Profile one proxy process under load with py-spy; python bench/spy.py [options].

With --cprofile the proxy runs under cProfile instead (deterministic, slower, but it counts
calls): the report gives the calls per message of the functions that matter for phase 2
(socket sends and receives, cancel scopes, checkpoints, parsing).

The load is bench/run.py's (smtp-source -> proxy -> smtp-sink, 2048-byte messages); the
proxy is ours with Workers 1 (or --impl splice for the floor).  py-spy samples it for
--seconds after a warm-up and the collapsed stacks are summarised here: the top functions by
self time and by cumulative time (in % of the samples, each function counted once per
stack), and the messages/s and CPU ms per message over the same window.  Needs py-spy
(``pip install py-spy``); the raw stacks are kept in bench/results/ for a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import run  # bench/run.py, next to this file

# (what, a test on the frame's file path) for the self-time breakdown, first match wins
CATEGORIES: list[tuple[str, Callable[[str], bool]]] = [
    ("system calls (socket send/recv: trio's _nonblocking_helper)", lambda f: "trio/_socket" in f),
    ("trio run loop, cancel scopes, deadlines (trio/_core)", lambda f: "trio/_core" in f),
    ("trio, other (streams, timeouts)", lambda f: "/trio/" in f or f.startswith("trio/")),
    ("contextlib (@contextmanager enter/exit)", lambda f: "contextlib" in f),
    ("logging", lambda f: "logging/" in f or "trio_proxsmtp/common/log.py" in f),
    ("protocol: parsing lines, commands, replies", lambda f: "trio_proxsmtp/protocol/" in f),
    ("spool", lambda f: "trio_proxsmtp/stages/spool.py" in f),
    ("relay and server (session I/O glue)", lambda f: "trio_proxsmtp/" in f),
    ("other", lambda f: True),
]
# Frames on every stack: left out of the cumulative list.
BORING = (
    "<frozen runpy>",
    "trio_proxsmtp/__main__.py",
    "trio_proxsmtp/daemon/cli.py",
    "bench/splice.py",
)


def frame_name(frame: str) -> tuple[str, str]:
    """("Class.method (file.py)", "path/of/file.py") from py-spy's "name (path:line)"."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    return f"{name} ({path.rsplit('/', 1)[-1]})", path


def summarise(raw: Path, top: int) -> str:
    """Top functions by self and cumulative share of the samples of py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    category: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [frame_name(f) for f in stack.split(";") if " (" in f]
        if not frames:
            continue
        count = int(count_text)
        total += count
        name, path = frames[-1]
        own[name] += count
        category[next(what for what, test in CATEGORIES if test(path))] += count
        for name in {n for n, p in frames if not any(b in p for b in BORING)}:
            cumulative[name] += count
    if not total:
        return "no samples"
    out = [f"{total} samples", "", "self time by kind:"]
    out += [f"  {100 * n / total:5.1f} %  {what}" for what, n in category.most_common()]
    out += ["", f"top {top} by self time:"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in own.most_common(top)]
    out += ["", f"top {top} by cumulative time (each function once per stack):"]
    exclude = {"run (_run.py)", "unrolled_run (_run.py)"}
    common = [(n, c) for n, c in cumulative.most_common(top + 3) if n not in exclude]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in common[:top]]
    return "\n".join(out)


# Calls per message worth counting (function name as pstats has it, a label).  cProfile
# counts each resumption of a coroutine as a call: an `async def` that suspends once shows
# twice; plain functions and C methods are exact.
PER_MESSAGE = [
    ("<method 'send' of '_socket.socket' objects>", "socket send() system calls"),
    ("<method 'recv' of '_socket.socket' objects>", "socket recv() system calls (with EAGAIN)"),
    ("<method 'poll' of 'select.epoll' objects>", "epoll_wait() calls"),
    ("move_on_after", "move_on_after (a cancel scope with a deadline)"),
    ("__enter__", "context managers entered (cancel scopes, conflict detectors, ...)"),
    ("checkpoint_if_cancelled", "trio checkpoint_if_cancelled (coroutine: calls + resumptions)"),
    ("cancel_shielded_checkpoint", "trio cancel_shielded_checkpoint (coroutine, ditto)"),
    ("reschedule", "trio Runner.reschedule (one per task switch)"),
    ("wait_readable", "trio wait_readable (coroutine; the socket was not ready)"),
    ("parse_command", "parse_command"),
    ("next_line", "LineBuffer.next_line"),
    ("next_reply", "ReplyParser.next_reply"),
    ("isEnabledFor", "logging isEnabledFor"),
    ("debug", "logger.debug calls"),
]


def summarise_cprofile(path: Path, top: int, messages: int) -> str:
    """Top functions by self and cumulative time, and calls per message, from cProfile."""
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    lines = [f"{messages} messages in the proxy's lifetime (cProfile covers all of it)"]
    for key in ("tottime", "cumulative"):
        out.seek(0)
        out.truncate()
        stats.sort_stats(key).print_stats(top)
        body = out.getvalue()
        lines += ["", f"top {top} by {key}:", body[body.index("   ncalls") :].rstrip()]
    calls: collections.Counter[str] = collections.Counter()
    for (_file, _line, name), (_cc, ncalls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        calls[name] += ncalls
    lines += ["", "calls per message (every function of that name):"]
    lines += [
        f"  {calls[name] / max(1, messages):7.2f}  {label}"
        for name, label in PER_MESSAGE
        if name in calls
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--impl", choices=["ours1", "splice"], default="ours1")
    parser.add_argument("--config", default="", help="extra config lines for ours, e.g. a filter")
    parser.add_argument("--cprofile", action="store_true", help="cProfile instead of py-spy")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not args.cprofile and not Path(spy).exists():
        sys.exit("py-spy not found: pip install py-spy")
    run.raise_nofile(run.NOFILE)
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    raw = results / f"profile-{args.impl}-{args.sessions}-{stamp}.txt"
    pstats_file = results / f"cprofile-{args.impl}-{args.sessions}-{stamp}.pstats"
    if args.cprofile:
        run.OURS_PREFIX = ["-m", "cProfile", "-o", str(pstats_file)]
    with tempfile.TemporaryDirectory(prefix="proxsmtp-profile-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        sink = run.Sink(workdir)
        proxy = run.Proxy(args.impl, workdir, sink.port, args.config.replace("\\n", "\n") + "\n")
        try:
            with run.load(proxy.port, args.sessions):
                time.sleep(args.warmup)
                cpu0, c0, t0 = proxy.cpu_seconds(), sink.count(), time.monotonic()
                if args.cprofile:
                    time.sleep(args.seconds)
                else:
                    subprocess.run(
                        [spy, "record", "--pid", str(proxy.pid), "--rate", str(args.rate),
                         "--duration", str(int(args.seconds)), "--format", "raw",
                         "--output", str(raw)],
                        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                cpu1, c1, t1 = proxy.cpu_seconds(), sink.count(), time.monotonic()
            total = sink.count()  # cProfile counts from start to exit: all messages
        finally:
            proxy.close()  # SIGTERM: the proxy drains and exits, cProfile writes its file
            sink.close()
    messages = c1 - c0
    print(
        f"{args.impl}, {args.sessions} sessions, {args.seconds:g} s: {messages / (t1 - t0):.0f} "
        f"msg/s, {(cpu1 - cpu0) * 1e3 / max(1, messages):.3f} ms CPU per message "
        f"(py-spy pauses it {args.rate} times a second: a little more than without)"
    )
    if args.cprofile:
        print(summarise_cprofile(pstats_file, args.top, total))
        print(f"\ncProfile data: {pstats_file}")
    else:
        print(summarise(raw, args.top))
        print(f"\nraw stacks: {raw}")


if __name__ == "__main__":
    main()
