"""``python -m trio_proxsmtp.example [--list | NAME]``: the files shipped for admins.

Prints the example config (no argument) or one of the other shipped files: the Postfix
snippets, filters, systemd unit and supervisord example under ``contrib/``, and the man
pages under ``man/``. So an installed wheel has them too, not only a clone:

    python -m trio_proxsmtp.example > /etc/proxsmtpd.conf
    python -m trio_proxsmtp.example contrib/postfix/before-queue.master.cf

A wheel carries them under ``trio_proxsmtp/_data/`` (copied there by setup.py at build
time); in a clone or an editable install they are read from the source tree.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXAMPLE_CONFIG = "proxsmtpd.conf.example"


def shipped_root() -> Path:
    """The directory holding proxsmtpd.conf.example, contrib/ and man/."""
    package = Path(__file__).resolve().parent
    for root in (package / "_data", package.parent):
        if (root / EXAMPLE_CONFIG).is_file():
            return root
    raise FileNotFoundError(f"{EXAMPLE_CONFIG} is not installed with {package}")


def shipped_files() -> list[str]:
    """The names that ``read_shipped`` accepts, sorted."""
    root = shipped_root()
    names = [EXAMPLE_CONFIG]
    for directory in ("contrib", "man"):
        names += [
            path.relative_to(root).as_posix()
            for path in (root / directory).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        ]
    return sorted(names)


def read_shipped(name: str = EXAMPLE_CONFIG) -> bytes:
    """One shipped file's content; only names from shipped_files() are accepted."""
    if name not in shipped_files():
        raise FileNotFoundError(f"not a shipped file: {name} (see --list)")
    return (shipped_root() / name).read_bytes()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trio_proxsmtp.example",
        description="Print the example config, or another file shipped for admins.",
    )
    parser.add_argument("name", nargs="?", default=EXAMPLE_CONFIG, help="a name from --list")
    parser.add_argument("--list", action="store_true", help="list the shipped files")
    args = parser.parse_args(argv)
    try:
        if args.list:
            print("\n".join(shipped_files()))
        else:
            sys.stdout.buffer.write(read_shipped(args.name))
    except FileNotFoundError as exc:
        print(f"example: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
