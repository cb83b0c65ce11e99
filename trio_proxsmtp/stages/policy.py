"""PolicyService over Trio (docs/behaviour.md §11.9): one connection to the policy server
per client connection, opened at the first RCPT and reused for the next ones, as Postfix
keeps its own.  Every wait has PolicyTimeout as its deadline (the connect, the request,
the whole answer: bytes trickling in do not extend it), and an answer is bounded
(protocol/policy.py MAX_ANSWER).  A failure closes the connection; when the connection
was an old one (the server may have closed it while idle) the request is sent once more
on a new one, else PolicyDefaultAction answers: tempfail (451 4.3.5, as Postfix) or dunno.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from trio_proxsmtp.protocol.errors import RemoteError
from trio_proxsmtp.protocol.policy import (
    AnswerReader,
    PolicyProtocolError,
    PolicyVerdict,
    PolicyVerdictKind,
    encode_request,
    judge,
)
from trio_proxsmtp.protocol.smtp.replies import Reply
from trio_proxsmtp.stages.settings import PolicyDefaultAction, PolicySettings

__all__ = ["POLICY_FAILED", "PolicyClient", "PolicyFailure"]

POLICY_FAILED = Reply.single(451, "4.3.5 Server configuration problem")
_READ_SIZE = 4096
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class PolicyFailure(RemoteError):
    """The policy service was unreachable, timed out or broke the protocol."""


class _TimedOut(PolicyFailure):
    """PolicyTimeout passed: a slow service, not an idle connection it closed, so not
    tried again (that would double the RCPT's wait)."""


class PolicyClient:
    """The policy service for one client connection; see the module docstring."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self.stream: trio.abc.Stream | None = None
        self.requests = 0  # sent on the current connection

    @property
    def name(self) -> str:
        return self.settings.address.text

    async def ask(self, attributes: Sequence[tuple[str, str]], recipient: str) -> PolicyVerdict:
        """The verdict on one RCPT; never raises PolicyFailure (the default action)."""
        request = encode_request(attributes)
        for _attempt in range(2):
            reused = self.stream is not None and self.requests > 0
            try:
                answer = await self._exchange(request)
            except PolicyFailure as exc:
                await self.aclose()
                if reused and not isinstance(exc, _TimedOut):
                    continue  # closed while idle, most likely: once more, on a new connection
                return self._default(str(exc))
            return judge(answer["action"], recipient)
        return self._default("failed twice")  # pragma: no cover - the 2nd is never reused

    def _default(self, reason: str) -> PolicyVerdict:
        note = f"{self.name}: {reason}; PolicyDefaultAction {self.settings.default_action.value}"
        if self.settings.default_action is PolicyDefaultAction.DUNNO:
            return PolicyVerdict(PolicyVerdictKind.RELAY, note=note)
        return PolicyVerdict(PolicyVerdictKind.REFUSE, POLICY_FAILED, note=note)

    async def _exchange(self, request: bytes) -> dict[str, str]:
        timeout = self.settings.timeout
        if self.stream is None:
            await self._connect()
        stream = self.stream
        assert stream is not None
        self.requests += 1
        reader = AnswerReader()
        with trio.move_on_after(timeout):  # one deadline: the request and its whole answer
            try:
                await stream.send_all(request)
            except _IO_ERRORS as exc:
                raise PolicyFailure(f"cannot send the request: {exc}") from None
            while True:
                try:
                    data = await stream.receive_some(_READ_SIZE)
                except _IO_ERRORS as exc:
                    raise PolicyFailure(f"cannot read the answer: {exc}") from None
                if not data:
                    raise PolicyFailure("connection closed before the answer")
                try:
                    answer = reader.feed(bytes(data))
                except PolicyProtocolError as exc:
                    raise PolicyFailure(f"protocol error: {exc}") from None
                if answer is not None:
                    return answer
        raise _TimedOut(f"no answer within {timeout:g}s")

    async def _connect(self) -> None:
        address = self.settings.address
        with trio.move_on_after(self.settings.timeout) as scope:
            try:
                if address.path is not None:
                    self.stream = await trio.open_unix_socket(address.path)
                else:
                    assert address.host is not None
                    self.stream = await trio.open_tcp_stream(address.host, address.port)
            except OSError as exc:
                raise PolicyFailure(f"cannot connect: {exc}") from None
        if scope.cancelled_caught:
            raise _TimedOut("connect timed out")
        self.requests = 0

    async def aclose(self) -> None:
        """Close the connection (cancellation-safe: the socket closes regardless)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)
