"""The sans-IO session alone, per message: one connection's session driven through many
messages (MAIL, RCPT, DATA, the spooled message, our DATA, the replay, RSET between), no
I/O.  The number is microseconds of `Session.handle` per message (best of the rounds).

    python bench/session.py [--messages 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

from trio_proxsmtp.protocol.session.events import (
    ClientCommand,
    Greeting,
    MessageReceived,
    UpstreamReply,
)
from trio_proxsmtp.protocol.session.machine import Session
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.smtp.commands import parse_command
from trio_proxsmtp.protocol.smtp.replies import Reply

OK = Reply.single(250, "2.0.0 Ok")
GO = Reply.single(354, "go ahead")
EHLO = Reply(250, ("up.example", "PIPELINING", "SIZE 10000000", "8BITMIME"))
MAIL = parse_command(b"MAIL FROM:<sender@example.com> SIZE=1000\r\n")
RCPT = parse_command(b"RCPT TO:<rcpt@example.com>\r\n")
DATA = parse_command(b"DATA\r\n")


def one_round(messages: int) -> float:
    policy = SessionPolicy(
        client="192.0.2.1", filtering=False, max_message_size=10_000_000, hard_error_limit=20
    )
    session = Session(policy)
    handle = session.handle
    handle(Greeting(Reply.single(220, "up.example ESMTP")))
    handle(ClientCommand(parse_command(b"EHLO client.example\r\n")))
    handle(UpstreamReply(EHLO))
    started = time.perf_counter()
    for _ in range(messages):
        handle(ClientCommand(MAIL))
        handle(UpstreamReply(OK))
        handle(ClientCommand(RCPT))
        handle(UpstreamReply(OK))
        handle(ClientCommand(DATA))
        handle(MessageReceived(1000, seconds=0.001))
        handle(UpstreamReply(GO))
        handle(UpstreamReply(OK))
    return (time.perf_counter() - started) / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    best = min(one_round(args.messages) for _ in range(args.rounds))
    print(f"session: {best:.2f} us per message ({args.messages} messages, best of {args.rounds})")


if __name__ == "__main__":
    main()
