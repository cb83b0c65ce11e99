"""Running one scripted session through proxsmtpd 1.10 or through us, and what was seen.

Shared by the corpus test and the tests of intended differences.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
from integration_support import c_proxsmtpd

from trio_proxsmtp.testing import FakeClient, FakeUpstream, open_client, run_proxy

READ_TIMEOUT = 8.0
"""Per reply; long enough for a filter, short enough that a hang shows as HANG."""

HANG = b"<no reply>"
EOF = b"<EOF>"

ProxyStarter = Callable[[str, FakeUpstream, Path], AbstractAsyncContextManager[int]]


@attrs.frozen
class Burst:
    """A step sent in one write that expects ``replies`` replies (client pipelining)."""

    data: bytes
    replies: int


Step = bytes | Burst


@attrs.frozen
class Transcript:
    """What the client saw and what the upstream received, for one session."""

    replies: tuple[bytes, ...]
    """The greeting, then one reply per step (or EOF/HANG, after which nothing is sent)."""
    client_received: bytes
    """Every byte the client received, the close included."""
    upstream: tuple[bytes, ...]
    """Every byte each upstream connection received."""


async def _read_replies(client: FakeClient, wanted: int, replies: list[bytes]) -> bool:
    """Read ``wanted`` replies into ``replies``; False (and EOF/HANG noted) if they stop."""
    for _ in range(wanted):
        try:
            replies.append((await client.read_reply()).to_bytes())
        except EOFError:
            replies.append(EOF)
            return False
        except trio.TooSlowError:
            replies.append(HANG)
            return False
    return True


@asynccontextmanager
async def start_c(
    config: str, up: FakeUpstream, workdir: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[int]:
    async with c_proxsmtpd(config, workdir, out_address=up.address, env=env) as port:
        yield port


@asynccontextmanager
async def start_ours(config: str, up: FakeUpstream, workdir: Path) -> AsyncIterator[int]:
    async with run_proxy(config, upstream=up) as proxy:
        yield proxy.port


async def run_session(
    start: ProxyStarter,
    config: str,
    steps: Sequence[Step],
    workdir: Path,
    upstream: Mapping[str, Any] | None = None,
    *,
    read_timeout: float = READ_TIMEOUT,
) -> Transcript:
    """Run ``steps`` lock-step through the proxy ``start`` makes; a fresh upstream per run."""
    spool = workdir.parent / "spool"  # shared by both runs: TMPDIR must be equal
    spool.mkdir(exist_ok=True)
    config = config.replace("{tmp}", str(spool))
    replies: list[bytes] = []
    async with FakeUpstream(**dict(upstream or {})) as up, start(config, up, workdir) as port:
        async with open_client("127.0.0.1", port, timeout=read_timeout) as client:
            for step in (b"", *steps):
                wanted = step.replies if isinstance(step, Burst) else 1
                await client.send(step.data if isinstance(step, Burst) else step)
                if not await _read_replies(client, wanted, replies):
                    break
            else:
                if steps and steps[-1] == b"QUIT\r\n":
                    await client.read_eof()
            received = bytes(client.received)
        # The proxy closes its upstream once the client is gone.
        with trio.fail_after(read_timeout):
            await up.wait_until(lambda: all(s.closed for s in up.sessions))
        upstream_bytes = tuple(bytes(s.received) for s in up.sessions)
    return Transcript(tuple(replies), received, upstream_bytes)
