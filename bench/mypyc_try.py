"""Try mypyc on the sans-IO core: build it in place, time the protocol's share, go back.

    python bench/mypyc_try.py build [--also MODULE.py ...]   # compile protocol/ in place
    python bench/mypyc_try.py clean                          # back to pure Python
    python bench/mypyc_try.py micro [--messages 5000]        # protocol work per message

`build` runs mypyc (it ships with mypy) on every module of `trio_proxsmtp/protocol/` but the
ones listed in SKIPPED, and leaves the extension modules next to the sources (the import
system prefers them to the .py files); `clean` removes them.  `micro` drives, without I/O,
the protocol work one relayed 2 KB message costs (bench/calls.py's load): the four commands
parsed, the four upstream replies parsed and written out again, the message framed in
(DataReceiver) and out (DataSender), and the session's eight inputs; it prints
microseconds per message, best of --rounds, and which path is loaded.  Compare with
bench/calls.py and bench/ab.py (a copy of the tree without the extension modules as the
old tree) for the whole relay.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "trio_proxsmtp" / "protocol"
# Not compiled, and why (mypyc 1.x):
# errors.py: exception classes with two bases ("Multiple inheritance is not supported").
# replies.py, session/envelope.py: `x: int = attrs.field(...)` in a class body; mypyc
#   checks the class attribute against the annotation at import ("int object expected;
#   got _CountingAttr").  mypyc knows only `attr.s`, not `attrs.frozen`/`attrs.define`, so
#   every attrs class of a compiled module stays a non-native (interpreted) class.
SKIPPED = {"errors.py", "replies.py", "envelope.py", "__init__.py"}

BODY = b"Subject: bench\r\n\r\n" + (b"x" * 74 + b"\r\n") * 27  # 2,070 bytes, as calls.py


def modules(also: list[str]) -> list[str]:
    found = sorted(str(p) for p in PROTOCOL.rglob("*.py") if p.name not in SKIPPED)
    return found + [str(ROOT / name) for name in also]


def clean() -> None:
    for path in [*ROOT.joinpath("trio_proxsmtp").rglob("*.so"), *ROOT.glob("*__mypyc*.so")]:
        path.unlink()
    shutil.rmtree(ROOT / "build", ignore_errors=True)


def build(also: list[str]) -> None:
    clean()
    mypyc = Path(sys.executable).with_name("mypyc")
    subprocess.run([str(mypyc), *modules(also)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def micro(messages: int, rounds: int) -> None:
    from trio_proxsmtp.protocol.session import machine
    from trio_proxsmtp.protocol.session.events import (
        ClientCommand,
        Greeting,
        MessageReceived,
        UpstreamReply,
    )
    from trio_proxsmtp.protocol.session.machine import Session
    from trio_proxsmtp.protocol.session.policy import SessionPolicy
    from trio_proxsmtp.protocol.smtp.commands import parse_command
    from trio_proxsmtp.protocol.smtp.data import DataReceiver, DataSender
    from trio_proxsmtp.protocol.smtp.reply_parser import ReplyParser

    compiled = not machine.__file__.endswith(".py")
    commands = [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.net>\r\n", b"DATA\r\n"]
    replies = [b"250 2.1.0 Ok\r\n", b"250 2.1.5 Ok\r\n", b"354 go ahead\r\n", b"250 2.0.0 Ok\r\n"]
    wire = BODY + b".\r\n"

    def one_round() -> float:
        policy = SessionPolicy(
            client="192.0.2.1", filtering=False, max_message_size=10_000_000, hard_error_limit=20
        )
        session = Session(policy)
        handle = session.handle
        parser = ReplyParser()
        parser.feed(b"220 up.example ESMTP\r\n")
        greeting = parser.next_reply()
        assert greeting is not None
        handle(Greeting(greeting))
        handle(ClientCommand(parse_command(b"EHLO client.example\r\n")))
        parser.feed(b"250-up.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        ehlo = parser.next_reply()
        assert ehlo is not None
        handle(UpstreamReply(ehlo))
        started = time.perf_counter()
        for _ in range(messages):
            got = []
            for raw in replies:
                parser.feed(raw)
                reply = parser.next_reply()
                assert reply is not None
                reply.to_bytes()
                got.append(reply)
            handle(ClientCommand(parse_command(commands[0])))
            handle(UpstreamReply(got[0]))
            handle(ClientCommand(parse_command(commands[1])))
            handle(UpstreamReply(got[1]))
            handle(ClientCommand(parse_command(commands[2])))
            receiver = DataReceiver()
            message = receiver.feed(wire)
            handle(MessageReceived(len(message), seconds=0.001))
            handle(UpstreamReply(got[2]))
            sender = DataSender(clean=True)
            sender.feed(message)
            sender.finish()
            handle(UpstreamReply(got[3]))
        return (time.perf_counter() - started) / messages * 1e6

    best = min(one_round() for _ in range(rounds))
    path = "compiled" if compiled else "pure"
    print(f"protocol work per message ({path}): {best:.1f} us, best of {rounds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["build", "clean", "micro"])
    parser.add_argument("--also", nargs="*", default=[], help="more modules (repo paths)")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.what == "build":
        build(args.also)
    elif args.what == "clean":
        clean()
    else:
        micro(args.messages, args.rounds)


if __name__ == "__main__":
    main()
