"""XCLIENT NAME=: the client's host name, forward-confirmed like Postfix does it."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing

from trio_proxsmtp.relay import client_info as relay


def _resolver(
    monkeypatch: pytest.MonkeyPatch,
    ptr: dict[str, str | int],
    forward: dict[str, list[str] | int],
) -> None:
    """Fake DNS: a str/list answers, an int raises gaierror with that code, -1 hangs."""

    async def getnameinfo(sockaddr: tuple[str, int], flags: int) -> tuple[str, str]:
        assert flags & socket.NI_NAMEREQD
        answer = ptr[sockaddr[0]]
        if answer == -1:
            await trio.sleep_forever()
        if isinstance(answer, int):
            raise socket.gaierror(answer, "fake")
        return answer, "0"

    async def getaddrinfo(host: str, port: object, **kwargs: Any) -> list[Any]:
        answer = forward[host]
        if isinstance(answer, int):
            raise socket.gaierror(answer, "fake")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in answer]

    monkeypatch.setattr(trio.socket, "getnameinfo", getnameinfo)
    monkeypatch.setattr(trio.socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(
    ("ptr", "forward", "expected"),
    [
        ({"192.0.2.1": "mx.example"}, {"mx.example": ["192.0.2.1"]}, "mx.example"),
        # A PTR name that does not resolve back is a claim, not a name.
        ({"192.0.2.1": "mail.google.com"}, {"mail.google.com": ["8.8.8.8"]}, "[UNAVAILABLE]"),
        ({"192.0.2.1": socket.EAI_NONAME}, {}, "[UNAVAILABLE]"),
        ({"192.0.2.1": socket.EAI_AGAIN}, {}, "[TEMPUNAVAIL]"),
        ({"192.0.2.1": "mx.example"}, {"mx.example": socket.EAI_AGAIN}, "[TEMPUNAVAIL]"),
    ],
)
async def test_client_host_name(
    monkeypatch: pytest.MonkeyPatch,
    ptr: dict[str, str | int],
    forward: dict[str, list[str] | int],
    expected: str,
) -> None:
    _resolver(monkeypatch, ptr, forward)
    with trio.fail_after(10):
        assert await relay.client_host_name("192.0.2.1") == expected


async def test_client_host_name_times_out(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    _resolver(monkeypatch, {"192.0.2.1": -1}, {})
    with trio.fail_after(60):
        start = trio.current_time()
        assert await relay.client_host_name("192.0.2.1") == "[TEMPUNAVAIL]"
        assert trio.current_time() - start == pytest.approx(relay.NAME_LOOKUP_TIMEOUT)


async def test_unix_client_has_no_name() -> None:
    assert await relay.client_host_name("") == "[UNAVAILABLE]"
