"""The sans-IO core's work for one relayed message, part by part, without I/O.

    python bench/protocol_work.py [--messages 5000] [--rounds 5]

bench/calls.py's message (2 KB, lock-step MAIL, RCPT, DATA) as the core sees it: the three
commands parsed; the four upstream replies parsed and written out again for the client;
the message framed in (DataReceiver) and out (DataSender, as the replay of a client's
clean DATA); the session's eight inputs.  Microseconds per message for each part and in
all, best of --rounds, and which path the core is on: run it before and after
`python tools/compile.py` (or `--clean`) to see what compiling the core saves and where.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from trio_proxsmtp import compiled_core
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
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.protocol.smtp.reply_parser import ReplyParser

BODY = b"Subject: bench\r\n\r\n" + (b"x" * 74 + b"\r\n") * 27  # 2,070 bytes, as calls.py
WIRE = BODY + b".\r\n"
COMMANDS = [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.net>\r\n", b"DATA\r\n"]
REPLIES = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n250 2.0.0 Ok\r\n"


def commands() -> None:
    for line in COMMANDS:
        parse_command(line)


def replies(parser: ReplyParser) -> Callable[[], None]:
    def run() -> None:
        parser.feed(REPLIES)
        for _ in range(4):
            reply = parser.next_reply()
            assert reply is not None
            reply.to_bytes()

    return run


def data() -> None:
    receiver = DataReceiver()
    message = receiver.feed(WIRE)
    sender = DataSender(clean=True, dot_lines=receiver.dot_lines)
    sender.feed(message)
    sender.finish()


def session_inputs() -> Callable[[], None]:
    policy = SessionPolicy(
        client="192.0.2.1", filtering=False, max_message_size=10_000_000, hard_error_limit=20
    )
    handle = Session(policy).handle
    handle(Greeting(Reply.single(220, "up.example ESMTP")))
    handle(ClientCommand(parse_command(b"EHLO client.example\r\n")))
    handle(UpstreamReply(Reply(250, ("up.example", "PIPELINING", "8BITMIME"))))
    mail, rcpt, data = (parse_command(line) for line in COMMANDS)
    ok, go = Reply.single(250, "2.0.0 Ok"), Reply.single(354, "go ahead")

    def run() -> None:
        handle(ClientCommand(mail))
        handle(UpstreamReply(ok))
        handle(ClientCommand(rcpt))
        handle(UpstreamReply(ok))
        handle(ClientCommand(data))
        handle(MessageReceived(len(BODY), seconds=0.001))
        handle(UpstreamReply(go))
        handle(UpstreamReply(ok))

    return run


def per_message(work: Callable[[], None], messages: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(messages):
            work()
        best = min(best, (time.perf_counter() - started) / messages * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    parts = {
        "commands (3 parsed)": commands,
        "replies (4 parsed, 4 written)": replies(ReplyParser()),
        "DATA framing, in and out": data,
        "session (8 inputs)": session_inputs(),
    }
    print(f"core: {compiled_core.describe()}")
    total = 0.0
    for name, work in parts.items():
        spent = per_message(work, args.messages, args.rounds)
        total += spent
        print(f"  {spent:6.1f} us  {name}")
    print(f"  {total:6.1f} us  per message in all")


if __name__ == "__main__":
    main()
