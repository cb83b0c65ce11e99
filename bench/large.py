"""One large message through two source trees, alternated: RSS growth and time (issue 26).

    python bench/large.py OLD_TREE [NEW_TREE] [--megabytes 50] [--rounds 3]

Each tree runs as ours with Workers 1 (bench/run.py's `big_message`: one message of
--megabytes MB after a warm-up, the proxy's RSS sampled every 5 ms), once with no filter (the
spool and the replay) and once through `FilterCommand: cat`; the order of the trees
alternates from round to round.  Prints the median RSS growth (MB) and seconds of each.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import run  # bench/run.py, next to this file

CONFIGS = {"no filter": "", "cat": "FilterCommand: cat\nFilterTimeout: 120\n"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path, nargs="?", default=run.REPO)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    for i in range(args.rounds):
        for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
            run.REPO = trees[name]
            for label, config in CONFIGS.items():
                with tempfile.TemporaryDirectory(prefix="proxsmtp-large-") as tmp:
                    workdir = Path(tmp)
                    workdir.chmod(0o755)
                    got = run.big_message("ours1", workdir, args.megabytes, config)
                figures.setdefault((name, label), []).append(got)
                print(
                    f"round {i + 1} {name} {label}: RSS {got['base_kb'] / 1024:.1f} MB, "
                    f"growth {got['growth_kb'] / 1024:.1f} MB, {got['seconds']:.2f} s",
                    flush=True,
                )
    for (name, label), runs in sorted(figures.items()):
        growth = statistics.median(r["growth_kb"] for r in runs) / 1024
        seconds = statistics.median(r["seconds"] for r in runs)
        print(f"{name} {label}: growth {growth:.1f} MB, {seconds:.2f} s ({args.megabytes} MB)")


if __name__ == "__main__":
    main()
