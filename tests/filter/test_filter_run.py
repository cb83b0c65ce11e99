"""run_filter with real processes: verdicts (spec §9, T15-T26), killing, spools, environment."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import shutil
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trio_proxsmtp.stages.filter.process as process_module
import trio_proxsmtp.stages.filter.run as run_module
import trio_proxsmtp.stages.filter.verdict as verdict_module
from trio_proxsmtp.daemon.prometheus import MULTIPROC_ENV
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.stages.filter.environment import filter_environment
from trio_proxsmtp.stages.filter.run import run_filter
from trio_proxsmtp.stages.filter.verdict import FilterVerdict, FilterVerdictKind, StderrTail
from trio_proxsmtp.stages.settings import FilterSpec, FilterType, direct_argv
from trio_proxsmtp.stages.spool import BUFFER_SIZE, Spool

MESSAGE = b"Subject: t\r\n\r\nbody \x00\xff\r\n..stuffed\r\n"
PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(autouse=True)
def reap_orphans() -> Iterator[None]:
    """Adopt the filters' orphaned grandchildren so their zombies can be reaped here.

    (The test machine's pid 1 may not reap; then a killed grandchild stays a zombie and
    ``killpg(pgid, 0)`` would still find it.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        _reap()
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


async def assert_group_gone(pgid: int) -> None:
    """No process of the group is left (zombies of adopted orphans are reaped first)."""
    with trio.fail_after(3):
        while True:
            _reap()
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            await trio.sleep(0.02)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "spool"
    directory.mkdir()
    return directory


def make_spool(directory: Path, data: bytes = MESSAGE) -> Spool:
    spool = Spool.create(str(directory))
    spool.write(data)
    spool.finish()
    return spool


def env(directory: Path, **extra: str) -> dict[str, str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}
    return filter_environment(
        client="192.0.2.7",
        server="127.0.0.1",
        sender="s@x",
        recipients=["a@x", "b@x"],
        remote=None,
        remote_helo=None,
        temp_directory=str(directory),
        base=base,
    )


async def run(
    directory: Path,
    command: str,
    *,
    mode: FilterType = FilterType.PIPE,
    timeout: float = 10.0,
    data: bytes = MESSAGE,
    environment: dict[str, str] | None = None,
) -> tuple[FilterVerdict, bytes | None]:
    """Run a filter; return the verdict and the delivered bytes; clean up the spools."""
    with make_spool(directory, data) as spool:
        verdict = await run_filter(
            FilterSpec(command, mode, timeout, str(directory)),
            spool,
            environment if environment is not None else env(directory),
        )
        delivered = None
        if verdict.message is not None:
            delivered = b"".join(verdict.message.chunks())
            if verdict.message is not spool:
                verdict.message.close()
    assert list(directory.iterdir()) == []  # every spool removed
    return verdict, delivered


# --- pass-through and replacement --------------------------------------------------------


async def test_cat_pass_through_is_byte_exact(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, delivered = await run(spool_dir, "cat")
    assert verdict.kind is FilterVerdictKind.ACCEPT
    assert (verdict.reply, verdict.status, verdict.detail) == (None, "FILTERED", "exit 0")
    assert delivered == MESSAGE


async def test_accepted_pipe_output_is_a_new_spool_the_caller_owns(spool_dir: Path) -> None:
    with trio.fail_after(10), make_spool(spool_dir) as spool:
        verdict = await run_filter(
            FilterSpec("cat", FilterType.PIPE, 10, str(spool_dir)), spool, {}
        )
        assert verdict.message is not None and verdict.message is not spool
        assert verdict.message.size == len(MESSAGE)
        assert not verdict.message.named  # nobody needs filter output by name
        assert b"".join(verdict.message.chunks()) == MESSAGE
        verdict.message.close()


async def test_t24_replacement_without_reading_stdin(spool_dir: Path) -> None:
    big = b"X" * 1000 + b"\r\n"
    with trio.fail_after(10):
        verdict, delivered = await run(
            spool_dir,
            r"printf 'Subject: replaced\r\n\r\nnew body\r\n'; exit 0",
            data=big * 2000,  # 2 MB: more than a pipe holds, so feeding hits EPIPE
        )
    assert verdict.kind is FilterVerdictKind.ACCEPT
    assert delivered == b"Subject: replaced\r\n\r\nnew body\r\n"


async def test_t25_empty_output_for_a_message_is_a_local_error(spool_dir: Path) -> None:
    # 1.10 delivered an empty message; it is almost always a broken filter (issue 16, 8).
    with trio.fail_after(10):
        verdict, delivered = await run(spool_dir, "cat >/dev/null; exit 0")
    assert verdict.kind is FilterVerdictKind.ERROR
    assert verdict.reply == Reply.single(451, "Local Error")
    assert verdict.status == "FILTER-ERROR"
    assert verdict.detail == f"exit 0 but no output for a message of {len(MESSAGE)} bytes"
    assert delivered is None


async def test_empty_message_through_cat_stays_empty(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, delivered = await run(spool_dir, "cat", data=b"")
    assert verdict.kind is FilterVerdictKind.ACCEPT
    assert delivered == b""


async def test_t19_stderr_ignored_on_exit_0(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, delivered = await run(spool_dir, "cat; echo '550 x' >&2; exit 0")
    assert verdict.kind is FilterVerdictKind.ACCEPT and verdict.reply is None
    assert delivered == MESSAGE


# --- the verdict table -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "kind", "reply", "status"),
    [
        ("echo '550 Bad Email' >&2; exit 1", "REJECT", (550, "Bad Email"), "550 Bad Email"),
        ("echo 'Virus found' >&2; exit 1", "REJECT", (550, "Content Rejected; Virus found"),
         "Virus found"),
        ("exit 1", "REJECT", (550, "Content Rejected; Content Rejected"), "Content Rejected"),
        ("cat >/dev/null; echo '250 Dropped' >&2; exit 1", "DROP", (250, "Dropped"),
         "250 Dropped"),
        ("printf 'first line\\n  second line  \\n\\n   \\n' >&2; exit 3", "REJECT",
         (550, "Content Rejected; second line"), "second line"),
        ("echo '451 4.7.1 Try later' >&2; exit 2", "REJECT", (451, "4.7.1 Try later"),
         "451 4.7.1 Try later"),
        ("echo '   554 leading spaces' >&2; exit 1", "REJECT", (554, "leading spaces"),
         "554 leading spaces"),
        ("echo '550-5.7.1 multi' >&2; exit 1", "REJECT", (550, "5.7.1 multi"),
         "550 5.7.1 multi"),
    ],
)  # fmt: skip
async def test_verdict_table(
    spool_dir: Path, command: str, kind: str, reply: tuple[int, str], status: str
) -> None:
    with trio.fail_after(10):
        verdict, delivered = await run(spool_dir, command)
    assert verdict.kind is FilterVerdictKind[kind]
    assert verdict.reply == Reply.single(*reply)
    assert verdict.status == status
    assert verdict.detail.startswith("exit ")
    assert verdict.message is None and delivered is None


async def test_exit_code_is_in_detail(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, _ = await run(spool_dir, "exit 3")
    assert verdict.detail == "exit 3"


async def test_stderr_control_characters_cannot_inject_lines(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, _ = await run(spool_dir, r"printf '550 a\r250 b\n' >&2; exit 1")
    assert verdict.reply is not None
    assert verdict.reply.to_bytes() == b"550 a 250 b\r\n"


async def test_t21_killed_by_signal_is_local_error(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, delivered = await run(spool_dir, "cat >/dev/null; kill -9 $$")
    assert verdict.kind is FilterVerdictKind.ERROR
    assert verdict.reply == Reply.single(451, "Local Error")
    assert (verdict.status, verdict.detail) == ("FILTER-ERROR", "killed by signal 9")
    assert delivered is None


# --- timeouts, killing the group, cancellation -------------------------------------------


async def test_timeout_kills_the_whole_group(spool_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pgid"
    with trio.fail_after(10):
        start = trio.current_time()
        verdict, delivered = await run(
            spool_dir, f"echo $$ > {pidfile}; sh -c 'sleep 30; cat'", timeout=0.5
        )
        assert trio.current_time() - start < 3
        assert verdict.kind is FilterVerdictKind.ERROR
        assert verdict.reply == Reply.single(451, "Local Error")
        assert (verdict.status, verdict.detail) == ("FILTER-ERROR", "timed out after 0.5s")
        assert delivered is None
        await assert_group_gone(int(pidfile.read_text()))


async def test_timeout_is_a_deadline_not_an_inactivity_timer(spool_dir: Path) -> None:
    # Chatty on stderr every 0.1 s: 1.10 would never time this out (T23).
    command = "i=0; while [ $i -lt 30 ]; do echo . >&2; sleep 0.1; i=$((i+1)); done; cat"
    with trio.fail_after(10):
        verdict, _ = await run(spool_dir, command, timeout=0.5)
    assert verdict.kind is FilterVerdictKind.ERROR
    assert verdict.detail == "timed out after 0.5s"
    assert verdict.timed_out


async def test_sigterm_ignored_gets_sigkill_after_grace(spool_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "pgid"
    with trio.fail_after(10):
        start = trio.current_time()
        verdict, _ = await run(
            spool_dir, f"trap '' TERM; echo $$ > {pidfile}; sleep 30", timeout=0.3
        )
        elapsed = trio.current_time() - start
        assert verdict.kind is FilterVerdictKind.ERROR
        assert process_module.KILL_GRACE <= elapsed < process_module.KILL_GRACE + 2
        await assert_group_gone(int(pidfile.read_text()))


async def test_background_grandchild_killed_after_normal_exit(
    spool_dir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pgid"
    with trio.fail_after(5):  # the grandchild holds stdout open: no kill would mean a hang
        verdict, delivered = await run(spool_dir, f"echo $$ > {pidfile}; sleep 30 & cat")
        assert verdict.kind is FilterVerdictKind.ACCEPT
        assert delivered == MESSAGE
        await assert_group_gone(int(pidfile.read_text()))


async def test_cancellation_kills_group_removes_output_and_propagates(
    spool_dir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pgid"
    reached_end = False
    with trio.fail_after(10), make_spool(spool_dir) as spool:
        # Output past what an unnamed spool keeps in memory, so that it gets a file.
        spec = FilterSpec(
            f"echo $$ > {pidfile}; head -c {BUFFER_SIZE + 1} /dev/zero; sleep 30; cat",
            FilterType.PIPE,
            60,
            str(spool_dir),
        )
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def client() -> None:
                    nonlocal reached_end
                    await run_filter(spec, spool, {})
                    reached_end = True

                nursery.start_soon(client)
                while not pidfile.exists() or not pidfile.read_text().strip():
                    await trio.sleep(0.01)
                # The input spool, and the unnamed output spool the filter writes to.
                while len(_open_under(spool_dir)) < 2:
                    await trio.sleep(0.01)
                scope.cancel()
        assert scope.cancelled_caught and not reached_end
        assert [p.name for p in spool_dir.iterdir()] == [os.path.basename(spool.path)]
        assert len(_open_under(spool_dir)) == 1  # the output spool is closed and gone
        await assert_group_gone(int(pidfile.read_text()))


# --- spawning: direct exec and the sh fallback -------------------------------------------


def test_direct_argv_only_for_plain_words() -> None:
    assert direct_argv("cat") == ["cat"]
    assert direct_argv("  /usr/bin/spamc -f  -u x@y ") == ["/usr/bin/spamc", "-f", "-u", "x@y"]
    for command in ["cat | tee x", "cat > x", "a; b", "echo $X", "X=1 cat", "echo hi",
                    "exit 1", ". script", "'cat'", "cat\tx", "", "kill -9 1"]:  # fmt: skip
        assert direct_argv(command) is None, command


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every argv given to the filter launcher."""
    calls: list[list[str]] = []
    real = process_module._spawn

    def spy(argv: list[str], *args: Any) -> Any:
        calls.append(list(argv))
        return real(argv, *args)

    monkeypatch.setattr(process_module, "_spawn", spy)
    return calls


async def test_plain_command_is_executed_without_sh(
    spool_dir: Path, spawned: list[list[str]]
) -> None:
    with trio.fail_after(10):
        verdict, delivered = await run(spool_dir, "cat")
    # Found on PATH by us, so the child makes one execve instead of one per PATH entry.
    assert spawned == [[shutil.which("cat")]]
    assert verdict.kind is FilterVerdictKind.ACCEPT and delivered == MESSAGE


async def test_bare_true_is_executed_without_sh_but_true_with_arguments_is_not(
    spool_dir: Path, spawned: list[list[str]]
) -> None:
    with trio.fail_after(10):
        await run(spool_dir, "true")
        await run(spool_dir, "true --help")
    assert spawned == [[shutil.which("true")], ["/bin/sh", "-c", "true --help"]]


async def test_missing_command_falls_back_to_sh_exit_127(
    spool_dir: Path, spawned: list[list[str]]
) -> None:
    with trio.fail_after(10):
        verdict, _ = await run(spool_dir, "no-such-filter-command-xyz --opt")
    assert spawned[-1] == ["/bin/sh", "-c", "no-such-filter-command-xyz --opt"]
    # A temporary failure with a generic reply, never a 5xx that bounces all mail; sh's
    # message is for the log only (issue 13).
    assert verdict.kind is FilterVerdictKind.ERROR
    assert verdict.reply == Reply.single(451, "Local Error")
    assert verdict.detail.startswith("exit 127: command not found: ")
    assert "no-such-filter-command-xyz" in verdict.detail


async def test_script_without_shebang_runs_through_sh(spool_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "nobang"
    script.write_text("cat >/dev/null; echo '550 from script' >&2; exit 1\n")
    script.chmod(0o755)
    with trio.fail_after(10):
        verdict, _ = await run(spool_dir, str(script))
    assert verdict.reply == Reply.single(550, "from script")


async def test_spool_directory_missing_is_local_error(tmp_path: Path) -> None:
    with trio.fail_after(10), make_spool(tmp_path) as spool:
        # Output past what the unnamed output spool keeps in memory: it needs the directory.
        command = f"cat >/dev/null; head -c {BUFFER_SIZE + 1} /dev/zero"
        spec = FilterSpec(command, FilterType.PIPE, 10, str(tmp_path / "missing"))
        verdict = await run_filter(spec, spool, {})
    assert verdict.kind is FilterVerdictKind.ERROR
    assert verdict.reply == Reply.single(451, "Local Error")
    assert verdict.detail.startswith("couldn't spool filter output: ")
    assert str(errno.ENOENT) in verdict.detail or "No such file" in verdict.detail


def test_path_lookup_is_reused_for_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []
    now = [1000.0]

    def which(name: str, path: str) -> str:
        lookups.append(name)
        return f"/found/{name}"

    monkeypatch.setattr(run_module, "_which_cache", {})
    monkeypatch.setattr(run_module.shutil, "which", which)
    monkeypatch.setattr(run_module.time, "monotonic", lambda: now[0])
    assert run_module._which("cat", "/bin") == "/found/cat"
    now[0] += run_module.WHICH_TTL / 2
    assert run_module._which("cat", "/bin") == "/found/cat"
    assert run_module._which("cat", "/usr/bin") == "/found/cat"  # another PATH: looked up
    assert lookups == ["cat", "cat"]
    now[0] += run_module.WHICH_TTL
    run_module._which("cat", "/bin")
    assert lookups == ["cat", "cat", "cat"]


async def test_a_stale_path_lookup_gets_the_same_verdict(spool_dir: Path, tmp_path: Path) -> None:
    """The program found a moment ago is gone: its exec fails and sh says "not found", as
    it would without the reused lookup."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "stale-filter-xyz"
    program.write_text("#!/bin/sh\nexec cat\n")
    program.chmod(0o755)
    environment = env(spool_dir, PATH=f"{bin_dir}:/usr/bin:/bin")
    with trio.fail_after(10):
        verdict, delivered = await run(spool_dir, "stale-filter-xyz", environment=environment)
        assert verdict.kind is FilterVerdictKind.ACCEPT and delivered == MESSAGE
        program.unlink()
        verdict, _ = await run(spool_dir, "stale-filter-xyz", environment=environment)
    assert verdict.kind is FilterVerdictKind.ERROR
    assert verdict.detail.startswith("exit 127: command not found")


# --- environment -------------------------------------------------------------------------


def test_filter_environment_variables() -> None:
    result = filter_environment(
        client="192.0.2.7",
        server="10.0.0.1",
        sender="<>",
        recipients=["a@x", "b@x"],
        remote="IPv6:2001:db8::1",
        remote_helo="weird helo",
        temp_directory="/var/tmp/",
        base={"PATH": "/bin", "CLIENT": "old"},
    )
    assert result == {
        "PATH": "/bin",
        "CLIENT": "192.0.2.7",
        "SERVER": "10.0.0.1",
        "SENDER": "<>",
        "RECIPIENTS": "a@x\nb@x",
        "REMOTE": "IPv6:2001:db8::1",
        "REMOTE_HELO": "weird helo",
        "TMPDIR": "/var/tmp/",
    }


def test_filter_environment_leaves_out_the_metrics_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, "/tmp/proxsmtpd-metrics.x")
    result = filter_environment(
        client="192.0.2.7",
        server="10.0.0.1",
        sender=None,
        recipients=[],
        remote=None,
        remote_helo=None,
        temp_directory="/tmp/",
    )
    assert MULTIPROC_ENV not in result
    assert result["CLIENT"] == "192.0.2.7"


def test_filter_environment_leaves_unknowns_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_THE_DAEMON", "yes")
    result = filter_environment(
        client="",
        server="/run/up.sock",
        sender=None,
        recipients=[],
        remote=None,
        remote_helo=None,
        temp_directory="/tmp/",
    )
    assert result["FROM_THE_DAEMON"] == "yes"
    assert result["CLIENT"] == ""
    for name in ("SENDER", "RECIPIENTS", "REMOTE", "REMOTE_HELO", "EMAIL"):
        assert name not in result


async def test_pipe_mode_environment_has_no_email(spool_dir: Path) -> None:
    command = (
        """printf '%s|%s|%s|%s|%s' "$CLIENT" "$SENDER" "$RECIPIENTS" "$TMPDIR" "${EMAIL-unset}" """
    )
    with trio.fail_after(10):
        verdict, delivered = await run(spool_dir, command)
    assert verdict.kind is FilterVerdictKind.ACCEPT
    assert delivered == f"192.0.2.7|s@x|a@x\nb@x|{spool_dir}|unset".encode()


# --- file mode ---------------------------------------------------------------------------


async def test_t26_file_mode_edits_email_and_replaces_by_mv(
    spool_dir: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    command = (
        f'echo "$EMAIL" > {seen}; test -z "$(cat)" || exit 9; '
        '{ printf "X-Added: 1\\r\\n"; cat "$EMAIL"; } > "$EMAIL.new" && mv "$EMAIL.new" "$EMAIL"'
    )
    with trio.fail_after(10), make_spool(spool_dir) as spool:
        verdict = await run_filter(
            FilterSpec(command, FilterType.FILE, 10, str(spool_dir)), spool, env(spool_dir)
        )
        assert verdict.kind is FilterVerdictKind.ACCEPT
        assert verdict.message is spool
        assert seen.read_text().strip() == spool.path
        expected = b"X-Added: 1\r\n" + MESSAGE
        assert spool.size == len(expected)
        assert b"".join(spool.chunks()) == expected
    assert list(spool_dir.iterdir()) == []


async def test_file_mode_reject(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, _ = await run(spool_dir, "echo '554 nope' >&2; exit 1", mode=FilterType.FILE)
    assert verdict.reply == Reply.single(554, "nope")


async def test_file_mode_filter_deleting_the_file_is_local_error(spool_dir: Path) -> None:
    with trio.fail_after(10):
        verdict, _ = await run(spool_dir, 'rm "$EMAIL"', mode=FilterType.FILE)
    assert verdict.kind is FilterVerdictKind.ERROR


# --- big messages ------------------------------------------------------------------------


async def test_20mb_through_cat_is_streamed(spool_dir: Path) -> None:
    line = bytes(range(32, 127)) + b"\r\n"
    size = 20 * 1024 * 1024
    body = line * (size // len(line))
    with make_spool(spool_dir, body) as spool:
        del body
        tracemalloc.start()
        try:
            with trio.fail_after(15):
                verdict = await run_filter(
                    FilterSpec("cat", FilterType.PIPE, 15, str(spool_dir)), spool, {}
                )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert verdict.message is not None
        with verdict.message as output:
            assert output.size == spool.size
            for mine, theirs in zip(spool.chunks(), output.chunks(), strict=True):
                assert mine == theirs
    assert peak < 4 * 1024 * 1024


# --- the stderr tail (B21) ---------------------------------------------------------------


def tail_of(chunks: list[bytes]) -> str:
    tail = StderrTail()
    for chunk in chunks:
        tail.feed(chunk)
    return tail.text()


def test_stderr_chunks_keep_leading_spaces() -> None:
    assert tail_of([b"partial", b" continued\n"]) == "partial continued"


def test_stderr_long_blank_tail_does_not_hide_the_last_line() -> None:
    assert tail_of([b"550 real reason\n", b" \n" * 10000, b"   "]) == "550 real reason"


def test_stderr_line_is_bounded() -> None:
    tail = StderrTail()
    for _ in range(1000):
        tail.feed(b"x" * 1000)
    assert len(tail.text()) == verdict_module.STDERR_LINE_LIMIT


@given(st.lists(st.sampled_from([b"a", b" ", b"\n", b"\r\n", b"550 ", b"\t"]), max_size=30),
       st.lists(st.integers(min_value=0, max_value=60), max_size=8))  # fmt: skip
def test_stderr_tail_independent_of_chunking(pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    points = sorted({c for c in cuts if c <= len(data)} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    lines = [line.strip() for line in data.split(b"\n") if line.strip()]
    expected = lines[-1].decode() if lines else ""
    assert tail_of(chunks) == tail_of([data]) == expected


def _open_under(directory: Path) -> list[str]:
    """Files this process has open below `directory` (unnamed ones included)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return found
