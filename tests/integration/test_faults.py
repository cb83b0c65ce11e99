"""Fault injection: hundreds of sessions where the client, the filter and the upstream fail.

Each session is planned from a seeded ``random.Random`` (set ``TRIO_PROXSMTP_FAULT_SEED``
to replay one; the plan, not the scheduling, is what the seed fixes). Per message, the
envelope sender ``KIND.ID@fault.test`` tells the filter script what to do: pass with
``cat``, pass after a short sleep, pass while leaving a background grandchild, crash by
SIGKILL, hang past FilterTimeout, or reject. The client may vanish (FIN or RST) in the
middle of a command, in the middle of DATA, while the filter runs, or right after its final
"." without reading the reply. The upstream may reset or close at EHLO, MAIL, RCPT, DATA,
the final "." or the RSET after a rejection, or answer DATA or "." with a 4xx/5xx.

Then: every message answered 250 arrived upstream exactly once and byte-exact; nothing
else arrived, except possibly (at most once) a message whose client vanished after sending
its own final "."; no filter process (nor any descendant) survives; TempDirectory is empty;
the proxy still relays a normal message.
"""

from __future__ import annotations

import enum
import os
import random
import shlex
import signal
import socket
import stat
import struct
import subprocess
from collections import Counter
from pathlib import Path

import attrs
import pytest
import trio

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.testing import (
    CLOSE,
    END_OF_DATA,
    RESET,
    FakeClient,
    FakeUpstream,
    Hangup,
    Responder,
    RunningProxy,
    Session,
    dot_stuff,
    run_proxy,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc"),
]

SEED = int(os.environ.get("TRIO_PROXSMTP_FAULT_SEED", "20240605"))
SESSIONS = 300
CONCURRENCY = 12
FILTER_TIMEOUT = 1.0  # seconds; the "hang" filter sleeps far longer
SLOW_FILTER_DELAY = 0.25  # the "slow" filter's sleep: well inside FilterTimeout
CLIENT_TIMEOUT = 8.0  # a proxy silent this long is hung: a failure, not a fault
QUIESCE_TIMEOUT = 5.0  # for the proxy to finish tearing connections down
STATE_VARIABLE = "TRIO_PROXSMTP_FAULT_STATE"  # in every filter's environment

# The filter: the envelope sender "KIND.ID@..." decides. Every run records its pid (its
# process group: the proxy starts it in a new session and `exec` keeps the pid) and leaves
# a "started.ID" marker so the client can vanish while it provably runs.
FILTER_SCRIPT = f"""#!/bin/sh
kind=${{SENDER%%.*}}
id=${{SENDER#*.}}
id=${{id%%@*}}
echo "$$" >> "${STATE_VARIABLE}/pids"
: > "${STATE_VARIABLE}/started.$id"
case $kind in
pass) exec cat ;;
slow) sleep {SLOW_FILTER_DELAY}; exec cat ;;
leak) sleep 30 </dev/null >/dev/null 2>&1 & exec cat ;;
crash) head -c 100 >/dev/null; kill -KILL $$ ;;
hang) sleep 30 ;;
deny) cat >/dev/null; echo "550 5.7.1 denied by the fault test" >&2; exit 1 ;;
esac
echo "451 4.3.0 fault filter: unknown kind $kind" >&2
exit 1
"""

PASSING_KINDS = ("pass", "slow", "leak")
KINDS = (*PASSING_KINDS, "crash", "hang", "deny")
KIND_WEIGHTS = (30, 10, 8, 12, 10, 12)
FILTER_REPLY = {"crash": 451, "hang": 451, "deny": 550}


class Phase(enum.Enum):
    """Where the client vanishes."""

    MID_COMMAND = "mid-command"
    MID_DATA = "mid-data"
    DURING_FILTER = "during-filter"
    BEFORE_REPLY = "before-final-reply"


AFTER_DOT = (Phase.DURING_FILTER, Phase.BEFORE_REPLY)


@attrs.frozen
class Fault:
    """The upstream's misbehaviour for one message: at ``point``, hang up or say ``reply``."""

    point: str  # "EHLO", "MAIL", "RCPT", "DATA", "." or "RSET"
    action: Hangup | str


@attrs.frozen
class Vanish:
    phase: Phase
    reset: bool  # RST instead of FIN
    command: str = ""  # MID_COMMAND: the verb whose line is cut
    cut: float = 0.0  # fraction of the line or of the DATA payload that is sent


@attrs.frozen
class MessagePlan:
    ident: str
    kind: str
    body: bytes
    fault: Fault | None

    @property
    def sender(self) -> str:
        return f"{self.kind}.{self.ident}@fault.test"

    @property
    def recipient(self) -> str:
        return f"rcpt.{self.ident}@fault.test"

    def expected_code(self) -> int:
        """The final reply the client must get when it does not vanish."""
        fault = self.fault
        if fault is not None and fault.point in ("EHLO", "MAIL", "RCPT"):
            return 421
        if self.kind not in PASSING_KINDS:
            return FILTER_REPLY[self.kind]
        if fault is not None and fault.point in ("DATA", "."):
            return 421 if isinstance(fault.action, Hangup) else int(fault.action[:3])
        return 250


@attrs.frozen
class SessionPlan:
    index: int
    helo: str
    messages: tuple[MessagePlan, ...]
    vanish: tuple[int, Vanish] | None  # (message index, how)


@attrs.define
class Result:
    attempted: bool = False
    final: Reply | None = None  # the reply that ended the transaction, if one was read
    dot_sent: bool = False
    vanished: Phase | None = None
    marker_seen: bool = False
    error: str | None = None


# -- the plan -------------------------------------------------------------------------------


def _body(rng: random.Random, ident: str) -> bytes:
    """A message with dot lines, empty lines and 8-bit bytes; now and then a large one."""
    lines = [f"Message-Id: <{ident}@fault.test>".encode(), b"Subject: fault injection", b""]
    count = rng.choice((1, 3, 20, 200)) if rng.random() < 0.9 else 3000
    for _ in range(count):
        shape = rng.random()
        if shape < 0.1:
            lines.append(b".")
        elif shape < 0.2:
            lines.append(b"." * rng.randint(1, 3) + b"dot line")
        elif shape < 0.3:
            lines.append(b"")
        else:
            alphabet = b"abcdefghij KLMNOP.0123\t\xc3\xa9\xff"
            lines.append(bytes(rng.choices(alphabet, k=rng.randint(1, 120))))
    return b"\r\n".join(lines) + b"\r\n"


def _fault(rng: random.Random, kind: str, first: bool) -> Fault | None:
    if rng.random() >= 0.3:
        return None
    points = ["MAIL", "RCPT"] + (["EHLO"] if first else [])
    if kind in PASSING_KINDS:
        points += ["DATA", "DATA", ".", ".", "."]
    else:
        points += ["RSET"]
    point = rng.choice(points)
    if point in ("DATA", ".") and rng.random() < 0.4:
        return Fault(point, rng.choice(("451 4.3.0 upstream says later", "554 5.6.0 no")))
    return Fault(point, rng.choice((RESET, CLOSE)))


def _ends_session(fault: Fault | None) -> bool:
    return fault is not None and isinstance(fault.action, Hangup)


def make_plan(seed: int, sessions: int) -> list[SessionPlan]:
    rng = random.Random(seed)
    plans = []
    for index in range(sessions):
        messages: list[MessagePlan] = []
        for number in range(rng.choice((1, 1, 2, 3))):
            kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
            ident = f"{seed}-{index}-{number}"
            fault = _fault(rng, kind, first=number == 0)
            messages.append(MessagePlan(ident, kind, _body(rng, ident), fault))
            if _ends_session(fault):
                break
        vanish = None
        if rng.random() < 0.45:
            at = rng.randrange(len(messages))
            phase = rng.choice(list(Phase))
            verbs = ["MAIL", "RCPT", "DATA"] + (["EHLO"] if at == 0 else [])
            vanish = (
                at,
                Vanish(phase, rng.random() < 0.5, rng.choice(verbs), rng.random()),
            )
            if phase is Phase.DURING_FILTER and rng.random() < 0.5:
                # A filter that still runs for a while: the client provably leaves first.
                messages[at] = attrs.evolve(messages[at], kind="slow", fault=None)
            messages = messages[: at + 1]
        plans.append(SessionPlan(index, f"client-{seed}-{index}", tuple(messages), vanish))
    return plans


# -- the upstream's faults ------------------------------------------------------------------


def upstream_faults(plans: list[SessionPlan]) -> dict[str, Responder]:
    """FakeUpstream responders that misbehave for exactly the planned messages."""
    by_sender = {m.sender: m for p in plans for m in p.messages}
    by_helo = {p.helo: p.messages[0] for p in plans}

    def responder(point: str) -> Responder:
        def respond(line: bytes, session: Session) -> Hangup | str | None:
            if point == "EHLO":
                message = by_helo.get(line.decode("utf-8", "replace")[5:].strip())
            elif point == "MAIL":
                text = line.decode("utf-8", "replace")
                message = by_sender.get(text[text.find("<") + 1 : text.rfind(">")])
            else:
                message = by_sender.get(session.mail_from or "")
            if message is None or message.fault is None or message.fault.point != point:
                return None
            return message.fault.action

        return respond

    return {point: responder(point) for point in ("EHLO", "MAIL", "RCPT", "DATA", ".", "RSET")}


# -- the client -----------------------------------------------------------------------------


async def _vanish(client: FakeClient, reset: bool) -> None:
    stream = client.stream
    assert isinstance(stream, trio.SocketStream)
    if reset:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()


async def _wait_for_file(path: Path, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while not path.exists():
            await trio.sleep(0.005)
        return True
    return False


def _cuts(vanish: Vanish | None, verb: str) -> bool:
    return vanish is not None and vanish.phase is Phase.MID_COMMAND and vanish.command == verb


async def run_session(
    plan: SessionPlan, proxy: RunningProxy, state: Path, results: dict[str, Result]
) -> None:
    """Drive one planned session; record what the client saw (never raises for the peer)."""
    vanish_at, vanish = plan.vanish if plan.vanish is not None else (-1, None)
    current = results[plan.messages[0].ident]
    try:
        async with proxy.connect(timeout=CLIENT_TIMEOUT) as client:

            async def cut_command(line: str) -> None:
                assert vanish is not None
                raw = line.encode()
                await client.send(raw[: max(1, int(len(raw) * vanish.cut))])
                current.vanished = vanish.phase
                await _vanish(client, vanish.reset)

            current.attempted = True
            if (await client.greeting()).code != 220:
                current.final = client.replies[-1]
                return
            helo = f"EHLO {plan.helo}"
            if _cuts(vanish if vanish_at == 0 else None, "EHLO"):
                await cut_command(helo)
                return
            if (reply := await client.command(helo)).code != 250:
                current.final = reply
                return
            for number, message in enumerate(plan.messages):
                current = results[message.ident]
                current.attempted = True
                here = vanish if number == vanish_at else None
                steps = (
                    ("MAIL", f"MAIL FROM:<{message.sender}>", 250),
                    ("RCPT", f"RCPT TO:<{message.recipient}>", 250),
                    ("DATA", "DATA", 354),
                )
                for verb, line, wanted in steps:
                    if _cuts(here, verb):
                        await cut_command(line)
                        return
                    if (reply := await client.command(line)).code != wanted:
                        current.final = reply
                        return
                payload = dot_stuff(message.body)
                if here is not None and here.phase is Phase.MID_DATA:
                    # Never the complete terminator: at most everything but its last byte.
                    await client.send(payload[: int((len(payload) - 1) * here.cut)])
                    current.vanished = here.phase
                    await _vanish(client, here.reset)
                    return
                await client.send(payload)
                current.dot_sent = True
                if here is not None and here.phase in AFTER_DOT:
                    if here.phase is Phase.DURING_FILTER:
                        marker = state / f"started.{message.ident}"
                        current.marker_seen = await _wait_for_file(marker, CLIENT_TIMEOUT / 2)
                    current.vanished = here.phase
                    await _vanish(client, here.reset)
                    return
                current.final = await client.read_reply()
                if current.final.code == 421:
                    return
            # After a hang-up planned at the RSET that followed a rejection, 421 is right.
            if (await client.quit()).code != 221 and not _ends_session(message.fault):
                current.error = f"QUIT answered {client.replies[-1]}"
    except trio.TooSlowError:
        current.error = "the proxy did not answer in time"
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the proxy hung up: allowed after an upstream fault, checked below
    except OSError as exc:
        current.error = f"client socket error: {exc}"


async def run_all(plans: list[SessionPlan], proxy: RunningProxy, state: Path) -> dict[str, Result]:
    results = {m.ident: Result() for p in plans for m in p.messages}
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def one(plan: SessionPlan) -> None:
        async with limiter:
            await run_session(plan, proxy, state, results)

    async with trio.open_nursery() as nursery:
        for plan in plans:
            nursery.start_soon(one, plan)
    return results


# -- what must hold afterwards --------------------------------------------------------------


def filter_survivors(state: Path) -> list[str]:
    """Live processes (not zombies) that inherited this test's filter environment."""
    marker = f"{STATE_VARIABLE}={state}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            status = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone, or not ours
        state_letter = status.rpartition(")")[2].split()[0]
        if state_letter != "Z" and marker in environ.split(b"\0"):
            found.append(f"pid {entry}: {status.split(')')[0]})")
    return found


async def quiesce(up: FakeUpstream, proxy: RunningProxy, state: Path) -> None:
    """Wait (bounded) until every connection is torn down and every filter is gone."""
    with trio.move_on_after(QUIESCE_TIMEOUT):
        while up.active_connections or proxy.leftovers() or filter_survivors(state):
            await trio.sleep(0.05)


def check(plans: list[SessionPlan], results: dict[str, Result], up: FakeUpstream) -> list[str]:
    """Every violated rule, one line each (empty when all hold)."""
    problems: list[str] = []
    slow_filters = 0
    arrived = Counter(t.mail_from for t in up.transactions)
    messages = {m.sender: m for p in plans for m in p.messages}
    for sender in arrived.keys() - messages.keys():
        problems.append(f"{sender}: arrived upstream but was never sent")
    for transaction in up.transactions:
        message = messages.get(transaction.mail_from)
        if message is not None and (
            transaction.message != message.body or transaction.rcpt_to != [message.recipient]
        ):
            problems.append(f"{message.ident}: arrived altered")
    for plan in plans:
        for number, message in enumerate(plan.messages):
            result, count = results[message.ident], arrived[message.sender]
            name = f"{message.ident} ({message.kind}, {message.fault}, {plan.vanish})"
            if result.error is not None:
                problems.append(f"{name}: {result.error}")
            acked = result.final is not None and result.final.code == 250
            if acked and count != 1:
                problems.append(f"{name}: acknowledged with 250 but arrived {count} times")
            elif not acked and result.vanished in AFTER_DOT:
                # The two-generals window: at most once, and never when the client left
                # while a filter that was still going to sleep a while had just started.
                provably_early = (
                    result.vanished is Phase.DURING_FILTER
                    and result.marker_seen
                    and message.kind == "slow"
                )
                limit = 0 if provably_early else 1
                if count > limit:
                    problems.append(f"{name}: client vanished, yet arrived {count} times")
            elif not acked and count:
                problems.append(f"{name}: not acknowledged, yet arrived {count} times")
            if plan.vanish is None or number < plan.vanish[0]:
                if not result.attempted:
                    problems.append(f"{name}: never attempted (test bug)")
                elif result.final is not None and _overloaded(message, result.final):
                    slow_filters += 1
                elif result.final is not None and result.final.code != message.expected_code():
                    problems.append(
                        f"{name}: final reply {result.final}, expected {message.expected_code()}"
                    )
                elif result.final is None and not _ends_session(message.fault):
                    problems.append(f"{name}: the proxy hung up without a reply")
    filtered = sum(m.kind != "hang" for p in plans for m in p.messages)
    if slow_filters > filtered // 20:
        problems.append(f"{slow_filters} of {filtered} quick filters answered 451")
    return problems


def _overloaded(message: MessagePlan, final: Reply) -> bool:
    """A quick filter (not "hang") that still ran into FilterTimeout (451).

    Only a badly overloaded machine makes a sub-second filter take FilterTimeout, so a
    few of these are tolerated, but not many.
    """
    return final.code == 451 and message.expected_code() != 451 and message.kind != "hang"


def _coverage(plans: list[SessionPlan]) -> set[str]:
    """What the plan exercises, so that a seed cannot silently test nothing."""
    seen = {m.kind for p in plans for m in p.messages}
    seen |= {m.fault.point for p in plans for m in p.messages if m.fault is not None}
    seen |= {p.vanish[1].phase.value for p in plans if p.vanish is not None}
    return seen


def test_plan_is_deterministic_and_covers_every_fault() -> None:
    assert make_plan(SEED, SESSIONS) == make_plan(SEED, SESSIONS)
    assert make_plan(SEED, SESSIONS) != make_plan(SEED + 1, SESSIONS)
    expected = {*KINDS, "EHLO", "MAIL", "RCPT", "DATA", ".", "RSET", *(p.value for p in Phase)}
    assert _coverage(make_plan(SEED, SESSIONS)) == expected


def test_survivor_detector_sees_a_process_with_the_filter_environment(tmp_path: Path) -> None:
    """The 'no filter survives' check is only worth something if it can see a survivor."""
    env = {**os.environ, STATE_VARIABLE: str(tmp_path)}
    process = subprocess.Popen(["sleep", "30"], env=env)
    try:
        assert any(f"pid {process.pid}:" in s for s in filter_survivors(tmp_path))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert filter_survivors(tmp_path) == []


async def test_fault_injection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded sessions with faults on all three sides; the proxy's promises must hold.

    The exception for messages whose client vanished after its own final "." is the
    two-generals problem: once the proxy has sent the final "." upstream, the upstream may
    accept the message at any moment, and no reply the proxy could still wait for tells it
    whether that happened. If the client leaves in that window, the proxy can neither stop
    the delivery nor tell the client about it. A client that does not read its reply must
    retry, and the message may then arrive twice (RFC 5321 §6.1 accepts this duplicate).
    From outside, the test cannot tell the exact moment the proxy sent the ".". So any
    such message may arrive at most once. The "slow" filter sleeps after its start marker.
    A client that leaves once that marker exists has left while the filter provably still
    runs, so its message must never arrive.
    """
    state = tmp_path / "state"
    state.mkdir()
    script = tmp_path / "fault-filter.sh"
    script.write_text(FILTER_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(STATE_VARIABLE, str(state))
    plans = make_plan(SEED, SESSIONS)
    # FilterTimeout in the file takes whole seconds; OutAddress is replaced by run_proxy.
    config = attrs.evolve(
        parse_config(
            f"FilterCommand: exec {shlex.quote(str(script))}\n"
            "FilterType: pipe\nTimeOut: 10\nMaxConnections: 64\nOutAddress: 127.0.0.1:1\n"
        ),
        filter_timeout=FILTER_TIMEOUT,
    )
    with trio.fail_after(120):
        async with (
            FakeUpstream(
                replies=upstream_faults(plans), delays={END_OF_DATA: 0.01}, reject_magic=False
            ) as up,
            run_proxy(config, upstream=up) as proxy,
        ):
            results = await run_all(plans, proxy, state)
            await quiesce(up, proxy, state)

            problems = check(plans, results, up)
            survivors = filter_survivors(state)
            leftovers = proxy.leftovers()
            assert not problems, f"seed {SEED}:\n" + "\n".join(problems[:40])
            assert not survivors, f"seed {SEED}: filter processes survived: {survivors[:10]}"
            assert not leftovers, f"seed {SEED}: TempDirectory not empty: {leftovers[:10]}"
            started = (state / "pids").read_text().split()
            acked = sum(r.final is not None and r.final.code == 250 for r in results.values())
            assert len(started) > SESSIONS // 2 and acked > SESSIONS // 4, (started, acked)

            # The proxy still serves a plain message after all that.
            before = len(up.transactions)
            final = MessagePlan(f"{SEED}-final", "pass", b"Subject: still here\r\n\r\nok\r\n", None)
            async with proxy.connect() as client:
                await client.greeting()
                replies = await client.send_message(final.sender, [final.recipient], final.body)
                assert replies[-1].code == 250
                assert (await client.quit()).code == 221
            [transaction] = up.transactions[before:]
            assert (transaction.mail_from, transaction.message) == (final.sender, final.body)
            await quiesce(up, proxy, state)
            assert proxy.leftovers() == []
