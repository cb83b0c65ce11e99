"""The relay's metrics hooks: a known mix of sessions gives exactly its counts.

The proxy runs in-process with a PrometheusMetrics of its own (run_proxy(metrics=...)); the
counts are read from its exposition, as a scrape would read them.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from trio_proxsmtp.daemon.prometheus import PrometheusMetrics
from trio_proxsmtp.testing import END_OF_DATA, FakeClient, FakeUpstream, run_proxy
from trio_proxsmtp.testing.certs import TestCertificates
from trio_proxsmtp.testing.upstream import Session

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# Decides by the Subject: reject (550), drop (a 2xx on stderr), crash (killed), or pass.
MIX_FILTER = """#!/bin/sh
msg=$(cat)
case "$msg" in
*"Subject: reject"*) echo "550 5.7.1 rejected by the test filter" >&2; exit 1 ;;
*"Subject: drop"*) echo "250 2.0.0 dropped by the test filter" >&2; exit 1 ;;
*"Subject: crash"*) kill -9 $$ ;;
*"Subject: slow"*) exec sleep 60 ;;
esac
printf '%s\\r\\n' "$msg"
"""
MAX_SIZE = 4000


def samples(exposition: bytes) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(exposition.decode("utf-8")):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def messages(found: Samples) -> dict[tuple[str, str], float]:
    """messages_total by (status, upstream class), the series above zero (every one exists
    from the start, at zero)."""
    return {
        (dict(labels)["status"], dict(labels)["upstream"]): value
        for (name, labels), value in found.items()
        if name == "proxsmtpd_messages_total" and value
    }


def mix_filter(tmp_path: Path) -> Path:
    script = tmp_path / "mix-filter.sh"
    script.write_text(MIX_FILTER)
    script.chmod(0o755)
    return script


def temp_fail(line: bytes, session: Session) -> str | None:
    return "451 4.3.0 try again later" if session.mail_from == "tempfail@x" else None


def message(subject: str, size: int = 0) -> bytes:
    return f"Subject: {subject}\r\n\r\n".encode() + b"x" * size + b"\r\n"


async def send(client: FakeClient, sender: str, subject: str, size: int = 0) -> int:
    replies = await client.send_message(sender, ["b@x"], message(subject, size))
    return replies[-1].code


async def test_a_known_mix_gives_exactly_its_counts(
    tmp_path: Path, test_certificates: TestCertificates
) -> None:
    metrics = PrometheusMetrics()
    certs = test_certificates
    config = (
        f"FilterCommand: {mix_filter(tmp_path)}\nMaxMessageSize: {MAX_SIZE}\n"
        f"TLSCertificate: {certs.certificate}\nTLSKey: {certs.key}\n"
    )
    sent = [
        ("a@x", "deliver", 0, 250),
        ("a@x", "deliver", 100, 250),
        ("a@x", "reject", 0, 550),
        ("a@x", "drop", 0, 250),
        ("tempfail@x", "deliver", 0, 451),
        ("a@x", "too big", MAX_SIZE + 1, 552),
        ("a@x", "crash", 0, 451),
    ]
    clients: list[FakeClient] = []
    with trio.fail_after(60):
        async with (
            FakeUpstream(replies={END_OF_DATA: temp_fail}) as up,
            run_proxy(config, upstream=up, metrics=metrics) as proxy,
        ):
            async with proxy.connect() as first, proxy.connect() as second:
                clients += [first, second]
                assert (await second.command("EHLO tls.example")).code == 250
                context = ssl.create_default_context(cafile=str(certs.ca))
                assert (await second.starttls(context, "localhost")).code == 220
                for n, (sender, subject, size, code) in enumerate(sent):
                    assert await send(clients[n % 2], sender, subject, size) == code, subject
                active = samples(metrics.exposition()[0])
                assert active[("proxsmtpd_connections_active", ())] == 2
                for client in clients:
                    await client.quit()
            await up.wait_until(lambda: up.active_connections == 0)
            await trio.testing.wait_all_tasks_blocked()
    found = samples(metrics.exposition()[0])
    assert messages(found) == {
        ("FILTERED", "2xx"): 2,
        ("REJECTED", "none"): 1,
        ("DROPPED", "none"): 1,
        ("FILTERED", "4xx"): 1,
        ("TOO-BIG", "none"): 1,
        ("FILTER-ERROR", "none"): 1,
    }
    sizes = [len(message(subject, size)) for _s, subject, size, _c in sent]
    assert found[("proxsmtpd_message_size_bytes_count", ())] == len(sent)
    assert found[("proxsmtpd_message_size_bytes_sum", ())] == sum(sizes)
    assert found[("proxsmtpd_connections_accepted_total", ())] == 2
    assert found[("proxsmtpd_connections_active", ())] == 0
    # The filter ran for all but the too-big one; the crash is its one failure.
    assert found[("proxsmtpd_filter_duration_seconds_count", ())] == len(sent) - 1
    assert found[("proxsmtpd_filter_failures_total", (("reason", "error"),))] == 1
    assert found[("proxsmtpd_tls_sessions_total", (("side", "client"),))] == 1
    # Every command and message upstream is one timed exchange.
    assert found[("proxsmtpd_upstream_round_trip_seconds_count", ())] >= len(sent) * 3
    # Bytes: the plain-text client's exactly (the TLS client's count after decryption).
    plain = clients[0]
    assert found[("proxsmtpd_bytes_sent_total", (("peer", "upstream"),))] == len(up.received)
    assert found[("proxsmtpd_bytes_received_total", (("peer", "client"),))] > len(plain.sent)
    assert found[("proxsmtpd_bytes_sent_total", (("peer", "client"),))] > len(plain.received)
    assert found[("proxsmtpd_bytes_received_total", (("peer", "upstream"),))] > 0


async def test_plain_sessions_count_client_bytes_exactly() -> None:
    metrics = PrometheusMetrics()
    with trio.fail_after(30):
        async with (
            FakeUpstream() as up,
            run_proxy("", upstream=up, metrics=metrics) as proxy,
            proxy.connect() as client,
        ):
            assert await send(client, "a@x", "plain", 5000) == 250
            await client.quit()
            await client.read_eof()
    found = samples(metrics.exposition()[0])
    assert found[("proxsmtpd_bytes_received_total", (("peer", "client"),))] == len(client.sent)
    assert found[("proxsmtpd_bytes_sent_total", (("peer", "client"),))] == len(client.received)
    assert found[("proxsmtpd_bytes_sent_total", (("peer", "upstream"),))] == len(up.received)
    assert messages(found) == {("PASSED", "2xx"): 1}


async def test_a_filter_timeout_is_counted_as_one(tmp_path: Path) -> None:
    # A real filter process: the clock must be real too (as in test_relay_filter's timeout).
    metrics = PrometheusMetrics()
    config = f"FilterCommand: {mix_filter(tmp_path)}\nFilterTimeout: 1\n"
    with trio.fail_after(60):
        async with (
            FakeUpstream() as up,
            run_proxy(config, upstream=up, metrics=metrics) as proxy,
            proxy.connect(timeout=60) as client,
        ):
            assert await send(client, "a@x", "slow") == 451
            await client.quit()
    found = samples(metrics.exposition()[0])
    assert found[("proxsmtpd_filter_failures_total", (("reason", "timeout"),))] == 1
    assert found[("proxsmtpd_filter_failures_total", (("reason", "error"),))] == 0
    assert found[("proxsmtpd_filter_duration_seconds_count", ())] == 1
    assert found[("proxsmtpd_filter_duration_seconds_sum", ())] == pytest.approx(1, abs=0.9)
    assert messages(found) == {("FILTER-ERROR", "none"): 1}


# Every labelled series a proxy can produce, at zero before its first event (issue 24).
LABELLED_AT_START = [
    (
        "proxsmtpd_connections_refused_total",
        "reason",
        ["busy", "proxy-untrusted", "proxy-invalid", "proxy-timeout"],
    ),
    ("proxsmtpd_filter_failures_total", "reason", ["error", "timeout"]),
    ("proxsmtpd_tls_sessions_total", "side", ["client", "upstream"]),
    ("proxsmtpd_bytes_received_total", "peer", ["client", "upstream"]),
    ("proxsmtpd_bytes_sent_total", "peer", ["client", "upstream"]),
]


def test_every_labelled_series_exists_at_zero_from_the_start() -> None:
    found = samples(PrometheusMetrics().exposition()[0])
    for name, label, values in LABELLED_AT_START:
        for value in values:
            assert found[(name, ((label, value),))] == 0, (name, value)
    statuses = ["PASSED", "FILTERED", "SKIPPED", "REJECTED", "DEFERRED", "DROPPED"]
    statuses += ["FILTER-ERROR", "TOO-BIG"]
    every = {(s, u): 0.0 for s in statuses for u in ("2xx", "4xx", "5xx", "none")}
    found_messages = {
        (dict(labels)["status"], dict(labels)["upstream"]): value
        for (name, labels), value in found.items()
        if name == "proxsmtpd_messages_total"
    }
    assert found_messages == every
