"""Python calls per message through the relay, counted (deterministic): python bench/calls.py

The proxy runs in-process (`trio_proxsmtp.testing.run_proxy`, no filter) between the fake
client and the fake upstream of `trio_proxsmtp.testing`; one session sends --messages
2048-byte messages lock-step (MAIL, RCPT, DATA, the message).  cProfile counts, per message,
the calls (function calls and coroutine steps) of every function outside `testing/` — the
relay, the session, trio, the stdlib — and the same for the functions of each of our layers;
`--top` lists the functions with the most calls per message.  Then, without the profiler, the
process CPU per message (the fakes' share included: compare trees, not absolutes), best of
--rounds.  Unlike a wall-clock benchmark on a shared machine, the call counts do not depend
on the load; run it on two trees (PYTHONPATH=OTHER_TREE python bench/calls.py) to compare.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import ssl
import tempfile
import time

import trio

from trio_proxsmtp.testing import FakeUpstream, run_proxy
from trio_proxsmtp.testing.certs import make_test_certificates

BODY = b"Subject: bench\r\n\r\n" + (b"x" * 74 + b"\r\n") * 27  # 2,070 bytes (--size)


async def send(
    messages: int, profile: cProfile.Profile | None, tls: str | None, out_tls: bool = False
) -> float:
    """CPU seconds per message of `messages` messages on one session (`tls`: a directory
    for test certificates, and the client says STARTTLS, or with `out_tls` the proxy
    speaks TLS to the next server)."""
    config = ""
    context = None
    upstream: dict[str, object] = {}
    if tls is not None:
        certs = make_test_certificates(tls)
        if out_tls:
            config = f"OutTLS: implicit\nOutTLSCAFile: {certs.ca}\nOutTLSServerName: localhost\n"
            upstream = dict(tls_certificate=certs.certificate, tls_key=certs.key, implicit_tls=True)
        else:
            config = f"TLSCertificate: {certs.certificate}\nTLSKey: {certs.key}\n"
            context = ssl.create_default_context(cafile=str(certs.ca))
    async with (
        FakeUpstream(**upstream) as up,  # type: ignore[arg-type]
        run_proxy(config, upstream=up) as proxy,
        proxy.connect() as c,
    ):
        await c.command("EHLO bench.example")
        if context is not None:
            await c.starttls(context, server_hostname="localhost")
            await c.command("EHLO bench.example")
        await c.send_message("a@example.org", ["b@example.net"], BODY)  # warm
        started = time.process_time()
        if profile is not None:
            profile.enable()
        for _ in range(messages):
            await c.send_message("a@example.org", ["b@example.net"], BODY)
        if profile is not None:
            profile.disable()
        spent = time.process_time() - started
        await c.quit()
    return spent / messages


def layer(filename: str) -> str | None:
    if "trio_proxsmtp/" not in filename:
        return None
    parts = filename.split("trio_proxsmtp/", 1)[1].split("/")
    return parts[0] if len(parts) > 1 else "root"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--tls", action="store_true", help="the client says STARTTLS first")
    parser.add_argument("--out-tls", action="store_true", help="TLS to the next server")
    parser.add_argument("--size", type=int, default=2070, help="message bytes")
    parser.add_argument("--sort", default="", help="also print the top --top by this pstats key")
    args = parser.parse_args()
    global BODY
    BODY = b"Subject: bench\r\n\r\n" + (b"x" * 74 + b"\r\n") * max(1, (args.size - 18) // 76)
    profile = cProfile.Profile()
    tmp = tempfile.TemporaryDirectory(prefix="proxsmtp-calls-")
    tls = tmp.name if args.tls or args.out_tls else None
    trio.run(send, args.messages, profile, tls, args.out_tls)
    stats = pstats.Stats(profile)
    total = 0
    by_layer: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    for (filename, line, name), (_cc, ncalls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        if "trio_proxsmtp/testing/" in filename:
            continue
        total += ncalls
        by_layer[layer(filename) or "trio, stdlib, attrs"] += ncalls
        short = filename.split("site-packages/")[-1].split("trio_proxsmtp/")[-1]
        by_function[f"{short}:{line} {name}"] += ncalls
    n = args.messages
    if args.sort:
        stats.sort_stats(args.sort).print_stats(args.top)
    print(f"calls per message outside testing/: {total / n:.0f}")
    for what, count in by_layer.most_common():
        print(f"  {count / n:8.1f}  {what}")
    for what, count in by_function.most_common(args.top):
        print(f"  {count / n:8.2f}  {what}")
    cpu = min(trio.run(send, args.messages, None, tls, args.out_tls) for _ in range(args.rounds))
    tmp.cleanup()
    print(f"process CPU per message (client and upstream fakes included): {cpu * 1e6:.0f} us")


if __name__ == "__main__":
    main()
