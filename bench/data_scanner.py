"""Throughput of the DATA stream codecs on typical mail; run: python bench/data_scanner.py.

Feeds about 200 MB of mail (a header block, then 60-80 character text lines, some starting
with ".") in 64 KiB chunks through DataReceiver (wire -> message) and DataSender
(message -> wire) and prints MB/s for each.  No pytest: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import random
import time

from trio_proxsmtp.protocol.smtp.data import DataReceiver, DataSender

CHUNK = 64 * 1024


def make_message(rng: random.Random, size: int) -> bytes:
    """One CRLF message of about `size` bytes: headers, a blank line, then text lines."""
    lines = [
        b"Received: from client.example (client.example [192.0.2.1]) by mx.example",
        b"From: Sender <sender@example.org>",
        b"To: Recipient <rcpt@example.net>",
        b"Subject: benchmark message",
        b"Message-ID: <bench@example.org>",
        b"",
    ]
    alphabet = b"abcdefghijklmnopqrstuvwxyz     ABCDEFG0123456789,.;"
    total = sum(len(line) + 2 for line in lines)
    while total < size:
        line = bytes(rng.choice(alphabet) for _ in range(rng.randint(60, 80)))
        if rng.random() < 0.02:
            line = b"." + line
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def bench_receiver(wire_chunks: list[bytes], rounds: int) -> tuple[float, int]:
    total = 0
    start = time.perf_counter()
    for _ in range(rounds):
        receiver = DataReceiver()
        for chunk in wire_chunks:
            receiver.feed(chunk)
        assert receiver.done
        total += sum(map(len, wire_chunks))
    return time.perf_counter() - start, total


def bench_sender(message_chunks: list[bytes], rounds: int) -> tuple[float, int]:
    total = 0
    start = time.perf_counter()
    for _ in range(rounds):
        sender = DataSender()
        for chunk in message_chunks:
            sender.feed(chunk)
        sender.finish()
        total += sum(map(len, message_chunks))
    return time.perf_counter() - start, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=200, help="total volume per codec")
    args = parser.parse_args()
    rng = random.Random(5321)
    message = make_message(rng, 10 * 1024 * 1024)
    sender = DataSender()
    wire = sender.feed(message) + sender.finish()
    rounds = max(1, args.megabytes * 1024 * 1024 // len(message))
    for name, func, data in (
        ("DataReceiver", bench_receiver, wire),
        ("DataSender", bench_sender, message),
    ):
        elapsed, total = func(chunks(data), rounds)
        print(f"{name}: {total / 1e6:.0f} MB in {elapsed:.2f} s = {total / 1e6 / elapsed:.0f} MB/s")


if __name__ == "__main__":
    main()
