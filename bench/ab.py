"""Alternated A/B of two source trees of trio_proxsmtp: CPU per message, one sitting.

    python bench/ab.py OLD_TREE [NEW_TREE] [--sessions 10] [--rounds 6] [--window 4]

Each tree (a checkout of this repository, e.g. a `git worktree` of an older commit; NEW_TREE
defaults to this one) runs as ours with Workers 1 under bench/run.py's load (smtp-source ->
proxy -> smtp-sink, 2048-byte messages), a fresh proxy and sink per measurement, the order of
the trees alternating from round to round.  It prints, per round, the messages/s and the
proxy's CPU ms per message (utime + stime over the window / messages counted at the sink),
then the medians and the median of the per-round ratios NEW/OLD.  On a shared machine the
noise between rounds is larger than a few percent: read the ratio of the pairs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import run  # bench/run.py, next to this file


def one(tree: Path, sessions: int, warmup: float, window: float) -> tuple[float, float]:
    """(msg/s, CPU ms per message) of ours W1 from `tree` under `sessions` sessions."""
    run.REPO = tree  # Proxy puts it on PYTHONPATH
    with tempfile.TemporaryDirectory(prefix="proxsmtp-ab-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)
        sink = run.Sink(workdir)
        proxy = run.Proxy("ours1", workdir, sink.port, "", max_conn=2 * sessions + 100)
        try:
            with run.load(proxy.port, sessions):
                rate, cpu_ms, _load = run.measure(proxy, sink, warmup, window)
        finally:
            proxy.close()
            sink.close()
    return rate, cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path, nargs="?", default=run.REPO)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--size", type=int, default=run.MSG_SIZE, help="message bytes")
    args = parser.parse_args()
    run.MSG_SIZE = args.size
    run.raise_nofile(run.NOFILE)
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    rate: dict[str, list[float]] = {"old": [], "new": []}
    print(
        f"old {trees['old']}\nnew {trees['new']}\n"
        f"{args.sessions} sessions, Workers 1, {args.size}-byte messages"
    )
    for i in range(args.rounds):
        order = ("old", "new") if i % 2 == 0 else ("new", "old")
        for name in order:
            r, c = one(trees[name], args.sessions, args.warmup, args.window)
            rate[name].append(r)
            cpu[name].append(c)
        print(
            f"round {i + 1} ({order[0]} first): old {rate['old'][-1]:6.0f} msg/s "
            f"{cpu['old'][-1]:.3f} ms   new {rate['new'][-1]:6.0f} msg/s {cpu['new'][-1]:.3f} ms"
            f"   new/old {cpu['new'][-1] / cpu['old'][-1]:.3f}",
            flush=True,
        )
    ratios = [n / o for n, o in zip(cpu["new"], cpu["old"], strict=True) if o]
    print(
        f"median: old {statistics.median(cpu['old']):.3f} ms, new "
        f"{statistics.median(cpu['new']):.3f} ms CPU per message; new/old "
        f"{statistics.median(ratios):.3f} (pairs {min(ratios):.3f}-{max(ratios):.3f}); "
        f"msg/s old {statistics.median(rate['old']):.0f}, new {statistics.median(rate['new']):.0f}"
        f"; load average {Path('/proc/loadavg').read_text().split()[0]} at {time.strftime('%H:%M')}"
    )


if __name__ == "__main__":
    main()
