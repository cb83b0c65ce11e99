"""``python -m trio_proxsmtp.testing sink|filter``: tools for trying the proxy out.

``sink`` is a fake upstream that prints what it receives. ``filter`` runs a FilterCommand on
one message file as the proxy would and prints the verdict and a diff (filtercheck.py);
exit status 0 deliver, 1 reject, 3 drop, 4 filter error, 2 usage or config error.

The sink lets the README quick start show a message going through the proxy without an MTA.
It answers like the fake upstream of the tests (every address accepted unless ``--reject``)
and prints each accepted message, envelope first, until SIGINT or SIGTERM (exit 0).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

import attrs
import trio

from trio_proxsmtp.testing import filtercheck
from trio_proxsmtp.testing.upstream import FakeUpstream, Transaction

DEFAULT_LISTEN = "127.0.0.1:10026"


@attrs.frozen
class _Listen:
    host: str = "127.0.0.1"
    port: int = 0
    unix_path: str | None = None


def _listen(text: str) -> _Listen:
    """Parse a --listen value: PORT, HOST:PORT, [IPV6]:PORT or a Unix socket path."""
    if "/" in text:
        return _Listen(unix_path=text)
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"invalid listen address: {text!r}")
    return _Listen(host=host, port=int(port))


def _printer(quiet: bool) -> Callable[[Transaction], None]:
    count = 0

    def show(transaction: Transaction) -> None:
        nonlocal count
        count += 1
        out = sys.stdout.buffer
        rcpts = ", ".join(f"<{r}>" for r in transaction.rcpt_to)
        head = (
            f"=== message {count}: from=<{transaction.mail_from}> to={rcpts} "
            f"({len(transaction.message)} bytes) peer={transaction.peer or '-'}\n"
        )
        out.write(head.encode("utf-8", "surrogateescape"))
        if not quiet:
            out.write(transaction.message)
            if not transaction.message.endswith(b"\n"):
                out.write(b"\n")
        out.flush()

    return show


async def _sink(args: argparse.Namespace) -> None:
    listen: _Listen = args.listen
    up = FakeUpstream(
        host=listen.host,
        port=listen.port,
        unix_path=listen.unix_path,
        reject_magic=args.reject,
        on_transaction=_printer(args.quiet),
        record=False,  # it may run for days: print, keep nothing
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with up:
            print(f"sink listening on {up.address}", file=sys.stderr, flush=True)
            async for _ in signals:
                break


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trio_proxsmtp.testing", description="Fake SMTP peers for testing."
    )
    commands = parser.add_subparsers(dest="tool", required=True)
    sink = commands.add_parser("sink", help="a fake upstream that prints what it receives")
    sink.add_argument(
        "--listen",
        type=_listen,
        default=DEFAULT_LISTEN,
        help=f"PORT, HOST:PORT, [IPV6]:PORT or a Unix socket path (default {DEFAULT_LISTEN}); "
        "port 0 picks a free port, printed on stderr",
    )
    sink.add_argument("--quiet", action="store_true", help="print the envelope only")
    sink.add_argument(
        "--reject", action="store_true", help='answer 550 to addresses containing "reject"'
    )
    check = commands.add_parser(
        "filter",
        help="run a FilterCommand on a message file as the proxy would",
        description="Run a FilterCommand on a message file as the proxy would; print the "
        "verdict and a diff of the message delivered. Exit status: 0 deliver, 1 reject, "
        "3 drop, 4 filter error, 2 usage or config error.",
    )
    filtercheck.add_arguments(check)
    args = parser.parse_args(argv)
    if args.tool == "filter":
        return _filter(args)
    try:
        trio.run(_sink, args)
    except OSError as error:
        print(f"sink: {error}", file=sys.stderr)
        return 1
    return 0


def _filter(args: argparse.Namespace) -> int:
    try:
        status, text = trio.run(filtercheck.run, args)
    except filtercheck.UsageError as error:
        print(f"filter: {error}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
