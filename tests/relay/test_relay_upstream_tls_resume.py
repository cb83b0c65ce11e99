"""TLS session resumption towards the next server (docs/behaviour.md §11.1.1).

The proxy keeps the last session of each next server (its certificate name and the address
reached) with the client context, and offers it on the next connection: the handshake is
then resumed ("resumed" in the log line).  A server that changed (new certificate, new
ticket keys) gets a full, verified handshake; a session verified for one name never opens
a connection checked for another.  Real TLS from Python's ssl over memory streams.
"""

from __future__ import annotations

import logging
import ssl
import time

import attrs
import pytest
import trio
import trio.testing
from memory_relay import CLIENT, memory_proxied

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.settings import upstream_settings
from trio_proxsmtp.relay.settings import UpstreamSettings
from trio_proxsmtp.relay.tls_sessions import TLSSessions, sessions_for
from trio_proxsmtp.relay.upstream import Upstream, UpstreamFailure
from trio_proxsmtp.testing import FakeUpstream
from trio_proxsmtp.testing.certs import TestCertificates

MESSAGE = b"Subject: resumed\r\n\r\nTLS resumed towards the next server\r\n"


def tls_upstream(certs: TestCertificates, implicit: bool) -> FakeUpstream:
    return FakeUpstream(tls_certificate=certs.certificate, tls_key=certs.key, implicit_tls=implicit)


def established(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "SERVER TLS established" in r.message]


@pytest.mark.parametrize("mode", ["implicit", "encrypt"])
async def test_the_second_connection_resumes_the_first_ones_session(
    mode: str, test_certificates: TestCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    up = tls_upstream(test_certificates, mode == "implicit")
    config = f"OutTLS: {mode}\nOutTLSCAFile: {test_certificates.ca}\n"
    async with memory_proxied(config, up) as (_, proxy):
        for _ in range(3):
            async with proxy.connect() as client:
                assert (await client.command("EHLO client.example")).code == 250
                replies = await client.send_message("s@x", ["r@x"], MESSAGE)
                assert replies[-1].code == 250
                assert (await client.command("QUIT")).code == 221
                await client.read_eof()
            await trio.testing.wait_all_tasks_blocked()
    lines = established(caplog)
    assert len(lines) == 3
    assert lines[0].endswith("(verified)")  # the first: a full handshake
    assert all(line.endswith("(verified, resumed)") for line in lines[1:])
    assert [t.message for t in up.transactions] == [MESSAGE] * 3


async def test_a_server_with_a_new_certificate_is_verified_again(
    test_certificates: TestCertificates,
    other_certificates: TestCertificates,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The next server is replaced by one whose certificate the proxy does not trust: the
    # kept session is not resumed (other ticket keys), the full handshake fails, 421.
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    config = f"OutTLS: implicit\nOutTLSCAFile: {test_certificates.ca}\n"
    async with memory_proxied(config, tls_upstream(test_certificates, True)) as (_, proxy):
        async with proxy.connect() as client:
            assert (await client.greeting()).code == 220
            assert (await client.command("QUIT")).code == 221
            await client.read_eof()
        await trio.testing.wait_all_tasks_blocked()
        proxy.up = tls_upstream(other_certificates, True)
        async with proxy.connect() as client:
            greeting = await client.greeting()
            assert greeting.code == 421 and greeting.lines[0].startswith("4.7.0")
    assert "certificate verification failed" in caplog.text
    assert not proxy.up.transactions


# -- Upstream itself: the name is part of the key ----------------------------------------


def settings_for(certs: TestCertificates, name: str) -> UpstreamSettings:
    config = parse_config(
        f"OutAddress: 127.0.0.1:25\nOutTLS: implicit\nOutTLSCAFile: {certs.ca}\n"
        f"OutTLSServerName: {name}\nTimeOut: 30\n"
    )
    return upstream_settings(config)


async def banner_over_tls(
    settings: UpstreamSettings, up: FakeUpstream, nursery: trio.Nursery
) -> Upstream:
    async def opener() -> tuple[trio.abc.Stream, str]:
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(up.handle, theirs, CLIENT.client)
        return ours, "upstream.memory"

    log = logging.LoggerAdapter(logging.getLogger(LOGGER_NAME))
    upstream = Upstream(settings, CLIENT, log, opener)
    try:
        await upstream.connect()
        [banner] = await upstream.exchange((), replies=1)
        assert banner.code == 220
    except BaseException:
        await upstream.aclose()
        raise
    return upstream


async def test_a_session_verified_for_one_name_is_not_offered_for_another(
    test_certificates: TestCertificates, nursery: trio.Nursery
) -> None:
    up = tls_upstream(test_certificates, True)
    localhost = settings_for(test_certificates, "localhost")
    upstream = await banner_over_tls(localhost, up, nursery)
    assert not upstream.stream.session_reused  # type: ignore[union-attr]
    await upstream.aclose()
    assert sessions_for(localhost.tls_context).get("localhost", "upstream.memory") is not None  # type: ignore[arg-type]
    again = await banner_over_tls(localhost, up, nursery)
    assert again.stream.session_reused  # type: ignore[union-attr]
    await again.aclose()
    # Same context, same server, another name (not in its certificate): no resumption,
    # so the certificate is checked against that name, and fails.
    other = attrs.evolve(localhost, tls_hostname="mail.example")
    assert other.tls_context is localhost.tls_context
    with pytest.raises(UpstreamFailure, match="certificate verification failed"):
        await banner_over_tls(other, up, nursery)


async def test_a_failed_handshake_forgets_the_session(
    test_certificates: TestCertificates,
    other_certificates: TestCertificates,
    nursery: trio.Nursery,
) -> None:
    settings = settings_for(test_certificates, "localhost")
    sessions = sessions_for(settings.tls_context)  # type: ignore[arg-type]
    await (await banner_over_tls(settings, tls_upstream(test_certificates, True), nursery)).aclose()
    assert sessions.get("localhost", "upstream.memory") is not None
    with pytest.raises(UpstreamFailure):
        await banner_over_tls(settings, tls_upstream(other_certificates, True), nursery)
    assert sessions.get("localhost", "upstream.memory") is None


# -- the cache ---------------------------------------------------------------------------


class FakeSession:
    """Stands for an `ssl.SSLSession` (which only a handshake makes)."""

    def __init__(self, ticket: bool, id: bytes, made: float, lifetime: int) -> None:
        self.has_ticket = ticket
        self.id = id
        self.time = int(made)
        self.timeout = lifetime


def fake(
    ticket: bool, id: bytes = b"", made: float | None = None, lifetime: int = 7200
) -> ssl.SSLSession:
    made = time.time() if made is None else made
    return FakeSession(ticket, id, made, lifetime)  # type: ignore[return-value]


def test_tls13_sessions_are_kept_only_with_their_ticket() -> None:
    sessions = TLSSessions()
    sessions.keep("n", "a", fake(False, b"id"), "TLSv1.3")
    assert sessions.get("n", "a") is None
    sessions.keep("n", "a", None, "TLSv1.3")
    assert sessions.get("n", "a") is None
    ticketed = fake(True)
    sessions.keep("n", "a", ticketed, "TLSv1.3")
    assert sessions.get("n", "a") is ticketed
    assert sessions.get(None, "a") is None and sessions.get("n", "b") is None


def test_tls12_sessions_are_kept_with_an_id_or_a_ticket() -> None:
    sessions = TLSSessions()
    sessions.keep("n", "a", fake(False), "TLSv1.2")
    assert sessions.get("n", "a") is None
    with_id = fake(False, b"id")
    sessions.keep("n", "a", with_id, "TLSv1.2")
    assert sessions.get("n", "a") is with_id


def test_the_cache_is_bounded_and_drops_the_least_recently_kept() -> None:
    sessions = TLSSessions(limit=2)
    first, second, third = fake(True), fake(True), fake(True)
    sessions.keep("n", "a", first, "TLSv1.3")
    sessions.keep("n", "b", second, "TLSv1.3")
    sessions.keep("n", "a", first, "TLSv1.3")  # kept again: the most recent now
    sessions.keep("n", "c", third, "TLSv1.3")
    assert len(sessions) == 2
    assert sessions.get("n", "b") is None
    assert sessions.get("n", "a") is first and sessions.get("n", "c") is third


def test_a_session_past_its_lifetime_is_not_offered() -> None:
    sessions = TLSSessions()
    sessions.keep("n", "old", fake(True, made=time.time() - 7300, lifetime=7200), "TLSv1.3")
    sessions.keep("n", "new", fake(True, made=time.time() - 60, lifetime=7200), "TLSv1.3")
    assert sessions.get("n", "old") is None
    assert len(sessions) == 1  # and it is dropped
    assert sessions.get("n", "new") is not None


def test_each_context_has_its_own_sessions() -> None:
    one = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    two = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert sessions_for(one) is sessions_for(one)
    assert sessions_for(one) is not sessions_for(two)
