"""Micro-benchmark: what one filter launch costs the proxy process (issue 15).

    python bench/spawn.py [--count 300] [--fds 400] [--rounds 3]

Spawns ``true`` (or ``/bin/sh -c true``) COUNT times, one after the other, each with its
three pipes and in a new process group, waits for it and closes the pipes, with FDS extra
descriptors open (a loaded proxy holds two sockets per session). Prints, per spawn, the
wall time and the CPU time of the *spawning* process (utime + stime of every thread; the
child's own exec and run are not included), median of the rounds, for:

- ``trio (thread + Popen)``: `trio.run_process`'s `open_process`, what filter.py used
  before: `subprocess.Popen` in a worker thread (``trio.to_thread``),
  ``start_new_session``, ``close_fds``, one ``pass_fds``.
- ``Popen inline``: the same `subprocess.Popen` (its vfork path: no preexec_fn) called in
  the Trio thread, ``process_group=0``; waited for through a pidfd.
- ``posix_spawn``: `os.posix_spawn` (glibc: clone(CLONE_VM|CLONE_VFORK)) with
  ``setpgroup=0``, the pipes as file actions; waited for through a pidfd.
- ``filter.spawn``: trio_proxsmtp's filter launcher as filter.py uses it now.
- ``C fork+sh -c``: what proxsmtpd 1.10 does per message: fork(), close descriptors
  3..1023 in the child, dup2 the pipes, execl("/bin/sh", "sh", "-c", CMD), waitpid (a C
  program compiled with ``cc`` into a temporary directory; skipped without a compiler).

Each Python mechanism runs both ``true`` directly and ``/bin/sh -c true``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trio_proxsmtp.stages.filter import process as filter_process

TRUE = shutil.which("true") or "/bin/true"
ARGVS = {"direct": [TRUE], "sh -c": ["/bin/sh", "-c", "true"]}

C_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <sys/time.h>
int main(int argc, char **argv) {
    int count = atoi(argv[1]);
    struct timeval t0, t1;
    gettimeofday(&t0, NULL);
    for (int i = 0; i < count; i++) {
        int in[2], out[2], err[2];
        if (pipe(in) || pipe(out) || pipe(err)) return 1;
        pid_t pid = fork();
        if (pid == 0) {
            dup2(in[0], 0); dup2(out[1], 1); dup2(err[1], 2);
            for (int fd = 3; fd < 1024; fd++) close(fd);
            execl("/bin/sh", "sh", "-c", argv[2], (char *)NULL);
            _exit(127);
        }
        close(in[0]); close(out[1]); close(err[1]);
        close(in[1]); close(out[0]); close(err[0]);
        int status;
        waitpid(pid, &status, 0);
    }
    gettimeofday(&t1, NULL);
    struct rusage self;
    getrusage(RUSAGE_SELF, &self);
    double wall = (t1.tv_sec - t0.tv_sec) + (t1.tv_usec - t0.tv_usec) / 1e6;
    double cpu = self.ru_utime.tv_sec + self.ru_utime.tv_usec / 1e6
               + self.ru_stime.tv_sec + self.ru_stime.tv_usec / 1e6;
    printf("%f %f\n", wall, cpu);
    return 0;
}
"""


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _wait_pidfd(pid: int) -> None:
    fd = os.pidfd_open(pid)
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    os.waitpid(pid, 0)


async def via_run_process(argv: list[str]) -> None:
    read, write = os.pipe()
    try:
        process = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(write,),
        )
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()
        await process.wait()
    finally:
        os.close(read)
        os.close(write)


def _pipes() -> tuple[list[int], list[int]]:
    """(parent ends, child ends) of stdin, stdout, stderr pipes."""
    parent, child = [], []
    for to_child in (True, False, False):
        r, w = os.pipe()
        parent.append(w if to_child else r)
        child.append(r if to_child else w)
    return parent, child


async def via_popen_inline(argv: list[str]) -> None:
    parent, child = _pipes()
    try:
        process = subprocess.Popen(
            argv, stdin=child[0], stdout=child[1], stderr=child[2], process_group=0
        )
    finally:
        for fd in child:
            os.close(fd)
    for fd in parent:
        os.close(fd)
    await _wait_pidfd(process.pid)
    process.returncode = 0  # reaped above


async def via_posix_spawn(argv: list[str]) -> None:
    parent, child = _pipes()
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(child)],
            setpgroup=0,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    finally:
        for fd in child:
            os.close(fd)
    for fd in parent:
        os.close(fd)
    await _wait_pidfd(pid)


async def via_filter_spawn(argv: list[str]) -> None:
    """filter.py's launcher, as _Run.start uses it (pipes, own group, reaper bookkeeping)."""
    async with trio.open_nursery() as nursery:
        process = await nursery.start(
            filter_process.run_and_kill_group, argv, subprocess.PIPE, dict(os.environ), "bench"
        )
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()


MECHANISMS: dict[str, Callable[[list[str]], Awaitable[None]]] = {
    "trio (thread + Popen)": via_run_process,
    "Popen inline": via_popen_inline,
    "posix_spawn": via_posix_spawn,
    "filter.spawn": via_filter_spawn,
}


@contextlib.contextmanager
def extra_fds(count: int) -> Iterator[None]:
    socks = [socket.socket() for _ in range(count)]
    try:
        yield
    finally:
        for sock in socks:
            sock.close()


async def measure(
    mechanism: Callable[[list[str]], Awaitable[None]], argv: list[str], count: int
) -> tuple[float, float]:
    await mechanism(argv)  # warm-up (imports, the thread pool)
    wall0, cpu0 = time.perf_counter(), cpu_self()
    for _ in range(count):
        await mechanism(argv)
    return (time.perf_counter() - wall0) / count, (cpu_self() - cpu0) / count


def measure_c(count: int, tmp: str) -> tuple[float, float] | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    source, binary = os.path.join(tmp, "spawn.c"), os.path.join(tmp, "spawn")
    with open(source, "w") as f:
        f.write(C_SOURCE)
    if not os.path.exists(binary):
        subprocess.run([cc, "-O2", "-o", binary, source], check=True)
    out = subprocess.run([binary, str(count), "true"], check=True, capture_output=True).stdout
    wall, cpu = map(float, out.split())
    return wall / count, cpu / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--fds", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {}
    with extra_fds(args.fds), tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, mechanism in MECHANISMS.items():
                for kind, argv in ARGVS.items():
                    result = trio.run(measure, mechanism, argv, args.count)
                    results.setdefault(f"{name}, {kind}", []).append(result)
            c = measure_c(args.count, tmp)
            if c is not None:
                results.setdefault("C fork+sh -c (1.10)", []).append(c)
    print(
        f"{args.count} spawns x {args.rounds} rounds, {args.fds} extra descriptors open;"
        " per spawn, median of the rounds:"
    )
    print(f"{'mechanism':32} {'wall ms':>8} {'our CPU ms':>11}")
    for name, rows in results.items():
        wall = statistics.median(r[0] for r in rows) * 1000
        cpu = statistics.median(r[1] for r in rows) * 1000
        print(f"{name:32} {wall:8.3f} {cpu:11.3f}")


if __name__ == "__main__":
    main()
