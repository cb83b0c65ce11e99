"""Issue 23 against a real Postfix as the next server: what it knows about the client the
proxy relays.  The client comes through a (test) balancer's PROXY header as
203.0.113.9:40123, so that the next server cannot mistake the proxy's own loopback address
for it.  One Postfix for the module, with three smtpd listeners:

- `smtpd_authorized_xclient_hosts` (XClient: on): its log shows the client's address and
  port, and its Received: line the HELO name and the protocol;
- `smtpd_authorized_xforward_hosts` (XForward: on): the same, through XFORWARD;
- `smtpd_upstream_proxy_protocol = haproxy` (OutProxyProtocol: v1 and v2): it logs the
  client's address and port on connect.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import trio
from integration_support import require
from postfix_support import PostfixSetup, free_port, running_postfix

from trio_proxsmtp.protocol.proxy_header import ProxyCommand, ProxyFamily, ProxyHeader
from trio_proxsmtp.protocol.proxy_header_build import encode_v2
from trio_proxsmtp.testing import run_proxy

pytestmark = pytest.mark.integration

CLIENT, CLIENT_PORT = "203.0.113.9", 40123
BALANCER_HEADER = encode_v2(
    ProxyHeader(
        2,
        ProxyCommand.PROXY,
        ProxyFamily.INET,
        source_address=CLIENT,
        source_port=CLIENT_PORT,
        destination_address="192.0.2.10",
        destination_port=25,
    )
)
HELO = "client.identity.test"
DEADLINE = 30.0
MESSAGE = b"Subject: who\r\n\r\nthe client's identity\r\n"


@pytest.fixture(scope="module")
def postfix() -> Iterator[tuple[PostfixSetup, dict[str, int]]]:
    ports = {name: free_port() for name in ("xclient", "xforward", "haproxy")}
    master = [
        f"127.0.0.1:{ports['xclient']} inet n - n - - smtpd",
        "  -o syslog_name=identity/xclient",
        "  -o smtpd_authorized_xclient_hosts=127.0.0.0/8",
        f"127.0.0.1:{ports['xforward']} inet n - n - - smtpd",
        "  -o syslog_name=identity/xforward",
        "  -o smtpd_authorized_xforward_hosts=127.0.0.0/8",
        # Held, so that the queue file shows what XFORWARD recorded (postcat).
        "  -o smtpd_end_of_data_restrictions=check_client_access,static:HOLD",
        f"127.0.0.1:{ports['haproxy']} inet n - n - - smtpd",
        "  -o syslog_name=identity/haproxy",
        "  -o smtpd_upstream_proxy_protocol=haproxy",
    ]
    main = [
        "smtpd_client_port_logging = yes",
        # The client may relay from its own address too: the test is about its identity.
        f"mynetworks = 127.0.0.0/8, {CLIENT}/32",
    ]
    with running_postfix(main_cf=main, master_cf=master, listens=list(ports.values())) as setup:
        yield setup, ports


async def send_through_proxy(config: str, port: int) -> None:
    with tempfile.TemporaryDirectory(prefix="trio-proxsmtp-identity-") as temp:
        async with (
            run_proxy(
                f"TempDirectory: {temp}\nProxyProtocol: on\n{config}", upstream=f"127.0.0.1:{port}"
            ) as proxy,
            proxy.connect(proxy_header=BALANCER_HEADER) as client,
        ):
            replies = await client.send_message(
                "s@example.org", ["r@example.net"], MESSAGE, helo=HELO
            )
            assert [r.code for r in replies] == [250, 250, 354, 250], replies
            await client.quit()


def wait_for_log(setup: PostfixSetup, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + DEADLINE
    while True:
        found = re.search(pattern, setup.log())
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} in the maillog:\n{setup.log()}")
        time.sleep(0.05)


def delivered_with(setup: PostfixSetup, text: str) -> str:
    """The delivered message whose text holds `text` (the maillog when none comes)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        for path in setup.delivered():
            body = path.read_text(errors="replace")
            if text in body:
                return body
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing delivered with {text!r}:\n{setup.log()}")
        time.sleep(0.05)


def held(setup: PostfixSetup, queue_id: str) -> str:
    """postcat of a held message (all its records)."""
    postcat = require("postcat")
    deadline = time.monotonic() + DEADLINE
    while True:
        result = subprocess.run(
            [postcat, "-c", str(setup.config_dir), "-q", queue_id],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        if result.returncode == 0 and "log_client_address" in result.stdout:
            return result.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"postcat -q {queue_id}: {result.stderr}\n{setup.log()}")
        time.sleep(0.05)


async def check_client_identity(
    postfix: tuple[PostfixSetup, dict[str, int]], kind: str, config: str
) -> None:
    setup, ports = postfix
    await send_through_proxy(config, ports[kind])
    client = re.escape(f"[{CLIENT}]:{CLIENT_PORT}")
    # XCLIENT replaces the client (client=); XFORWARD names it beside the proxy (orig_client=).
    key = "client" if kind == "xclient" else "client=\\S+, orig_client"
    line = await trio.to_thread.run_sync(
        functools.partial(
            wait_for_log, setup, rf"identity/{kind}/smtpd\[\d+\]: (\w+): {key}=\S*{client}"
        )
    )
    queue_id = line.group(1)
    if kind == "xforward":
        # The client Postfix logs the message for: the one XFORWARD named, its HELO name
        # and protocol too (the queue file's log_* attributes, which Postfix's own smtp
        # client would pass on by XFORWARD in turn).
        queued = await trio.to_thread.run_sync(functools.partial(held, setup, queue_id))
        for name, value in [
            ("log_client_address", CLIENT),
            ("log_client_port", str(CLIENT_PORT)),
            ("log_helo_name", HELO),
            ("log_protocol_name", "ESMTP"),
        ]:
            assert f"named_attribute: {name}={value}\n" in queued, queued
        return
    body = await trio.to_thread.run_sync(functools.partial(delivered_with, setup, queue_id))
    received = re.search(
        rf"Received: from {re.escape(HELO)} \(\S+ \[{re.escape(CLIENT)}\]\)"
        r"\s+by \S+ \(Postfix\) with ESMTP id " + queue_id,
        body,
    )
    assert received is not None, body


async def test_xclient_tells_postfix_the_clients_address_port_helo_and_protocol(
    postfix: tuple[PostfixSetup, dict[str, int]],
) -> None:
    await check_client_identity(postfix, "xclient", "XClient: on")


async def test_xforward_tells_postfix_the_same(
    postfix: tuple[PostfixSetup, dict[str, int]],
) -> None:
    await check_client_identity(postfix, "xforward", "XForward: on")


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_out_proxy_protocol_tells_postfix_the_clients_address(
    postfix: tuple[PostfixSetup, dict[str, int]], version: str
) -> None:
    setup, ports = postfix
    before = len(setup.log())
    await send_through_proxy(f"OutProxyProtocol: {version}", ports["haproxy"])
    pattern = (
        rf"identity/haproxy/smtpd\[\d+\]: connect from \S*\[{re.escape(CLIENT)}\]:{CLIENT_PORT}"
    )

    def logged() -> bool:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if re.search(pattern, setup.log()[before:]):
                return True
            time.sleep(0.05)
        return False

    assert await trio.to_thread.run_sync(logged), setup.log()[before:]


@pytest.mark.parametrize("kind", ["xclient", "xforward"])
@pytest.mark.parametrize("helo", ["\u00e9" * 42, "\u00e9" * 43, "x" * 255, "y" * 300])
async def test_postfix_takes_every_value_the_proxy_sends(
    postfix: tuple[PostfixSetup, dict[str, int]], kind: str, helo: str
) -> None:
    # Postfix refuses a value over 255 bytes as sent, xtext-encoded ("501 5.5.4 Error:
    # attribute value too long"): 42 x "é" is 252 bytes encoded, 43 are 258 and go as
    # [UNAVAILABLE]; the refusal would end the connection (XCLIENT) or the MAIL (XFORWARD).
    _, ports = postfix
    config = "XClient: on" if kind == "xclient" else "XForward: on"
    with tempfile.TemporaryDirectory(prefix="trio-proxsmtp-identity-") as temp:
        async with (
            run_proxy(
                f"TempDirectory: {temp}\n{config}", upstream=f"127.0.0.1:{ports[kind]}"
            ) as proxy,
            proxy.connect() as client,
        ):
            replies = await client.send_message(
                "s@example.org", ["r@example.net"], MESSAGE, helo=helo
            )
            assert [r.code for r in replies] == [250, 250, 354, 250], replies
