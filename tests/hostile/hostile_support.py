"""Helpers for the attack catalogue: a filter run with clean-up checks, a proxy with a filter."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from trio_proxsmtp.config import FilterType
from trio_proxsmtp.filter import FilterSpec, Verdict, filter_environment, run_filter
from trio_proxsmtp.spool import Spool
from trio_proxsmtp.testing import FakeUpstream, RunningProxy, run_proxy

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


def environment(
    directory: Path, *, sender: str = "s@x", recipients: Sequence[str] = ("a@x",)
) -> dict[str, str]:
    return filter_environment(
        client="192.0.2.7",
        server="127.0.0.1",
        sender=sender,
        recipients=recipients,
        remote=None,
        remote_helo=None,
        temp_directory=str(directory),
        base={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


async def filter_run(
    directory: Path,
    command: str,
    *,
    mode: FilterType = FilterType.PIPE,
    data: bytes = MESSAGE,
    env: Mapping[str, str] | None = None,
    size_limit: int | None = None,
    timeout: float = 20.0,
) -> tuple[Verdict, bytes | None]:
    """Run a filter; return the verdict and the delivered bytes. Every file it made is gone."""
    with Spool.create(str(directory)) as spool:
        spool.write(data)
        spool.finish()
        verdict = await run_filter(
            FilterSpec(command, mode, timeout, str(directory)),
            spool,
            environment(directory) if env is None else env,
            size_limit=size_limit,
        )
        delivered = None
        if verdict.message is not None:
            delivered = b"".join(verdict.message.chunks())
            if verdict.message is not spool:
                verdict.message.close()
    assert list(directory.iterdir()) == []
    return verdict, delivered


@asynccontextmanager
async def proxied(config: str) -> AsyncIterator[tuple[FakeUpstream, RunningProxy]]:
    """A FakeUpstream and the proxy in front of it; no spool file left at the end."""
    async with FakeUpstream() as upstream, run_proxy(config, upstream=upstream) as proxy:
        yield upstream, proxy
        assert proxy.leftovers() == []
