"""A fake Postfix policy service (SMTPD_POLICY_README): records every request and answers
as it is told, on a loopback port or a unix socket.

``FakePolicy("DUNNO")`` answers every request ``action=DUNNO``; give a callable to answer
per request (it gets the request's attributes), or one of `STALL` (never answer),
`HANGUP` (close without answering), or bytes (sent as they are, e.g. a broken answer)::

    policy = FakePolicy(lambda r: "DEFER_IF_PERMIT Greylisted" if r["recipient"] else "DUNNO")
    async with policy.serving() as address:   # "inet:127.0.0.1:PORT"
        ...  # PolicyService: {address}
    assert policy.requests[0]["protocol_state"] == "RCPT"
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator, Callable

import trio

from trio_proxsmtp.testing.listening import serving_on

__all__ = ["HANGUP", "STALL", "FakePolicy", "PolicyAnswer"]


class _Special(enum.Enum):
    STALL = "stall"
    HANGUP = "hangup"


STALL = _Special.STALL
HANGUP = _Special.HANGUP
PolicyAnswer = str | bytes | _Special
Script = PolicyAnswer | Callable[[dict[str, str]], PolicyAnswer]


class FakePolicy:
    """A policy server answering per `script`; see the module docstring."""

    def __init__(self, script: Script = "DUNNO") -> None:
        self.script = script
        self.requests: list[dict[str, str]] = []
        self.connections = 0  # accepted so far
        self.address = ""

    @contextlib.asynccontextmanager
    async def serving(self, unix_path: str | None = None) -> AsyncIterator[str]:
        """Listen (127.0.0.1 port 0, or `unix_path`); yields the ``PolicyService:`` value."""
        async with serving_on(self._serve, unix_path) as address:
            self.address = address
            yield self.address

    def _answer(self, request: dict[str, str]) -> PolicyAnswer:
        return self.script(request) if callable(self.script) else self.script

    async def _serve(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        buffer = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                while b"\n\n" in buffer:
                    raw, buffer = buffer.split(b"\n\n", 1)
                    lines = raw.decode("utf-8", "surrogateescape").split("\n")
                    request = dict(line.partition("=")[::2] for line in lines)
                    self.requests.append(request)
                    answer = self._answer(request)
                    if answer is STALL:
                        await trio.sleep_forever()
                    if answer is HANGUP:
                        return
                    if isinstance(answer, str):
                        answer = f"action={answer}\n\n".encode("utf-8", "surrogateescape")
                    assert isinstance(answer, bytes)
                    await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)
