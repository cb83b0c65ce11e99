"""Real milters through the proxy: what the next server receives.

OpenDKIM signs what a client hands the proxy (the signature verifies with dkimpy against the
generated key), OpenDKIM in verifying mode reports a tampered message in the
Authentication-Results it adds, and rspamd rejects GTUBE at the end of the message.
"""

from __future__ import annotations

import dkim
import trio
from milter_support import OpenDKIM
from test_milter_opendkim import MESSAGE, dns_for
from test_milter_rspamd import GTUBE, message

from trio_proxsmtp.testing import FakeUpstream, run_proxy


async def relay(milters: str, data: bytes) -> tuple[list[int], FakeUpstream]:
    """One message through the proxy with these milters; the replies and the upstream."""
    config = f"Milters: {milters}\nMilterDefaultAction: tempfail\n"
    with trio.fail_after(60):
        async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
            async with proxy.connect() as client:
                replies = await client.send_message(
                    "alice@example.test", ["bob@example.org"], data, helo="client.test"
                )
                await client.command("QUIT")
            await up.wait_until(lambda: up.active_connections == 0)
            assert proxy.leftovers() == []
    return [r.code for r in replies], up


async def test_opendkim_signs_what_the_upstream_receives(opendkim: OpenDKIM) -> None:
    codes, up = await relay(opendkim.address, MESSAGE)
    assert codes == [250, 250, 354, 250]
    [t] = up.transactions
    assert t.message.startswith(b"DKIM-Signature: ")
    assert t.message.endswith(MESSAGE)
    assert dkim.verify(t.message, dnsfunc=dns_for(opendkim))


async def test_opendkim_marks_a_tampered_message(opendkim_verifier: OpenDKIM) -> None:
    key = opendkim_verifier.private_key.read_bytes()
    signature = dkim.sign(
        MESSAGE,
        opendkim_verifier.selector.encode(),
        opendkim_verifier.domain.encode(),
        key,
        include_headers=[b"From", b"To", b"Subject"],
    )
    codes, up = await relay(opendkim_verifier.address, signature + MESSAGE)
    assert codes == [250, 250, 354, 250]
    codes, up_tampered = await relay(
        opendkim_verifier.address, (signature + MESSAGE).replace(b"Hello Bob", b"Hello Eve")
    )
    assert codes == [250, 250, 354, 250]
    good = up.transactions[0].message.split(b"\r\n\r\n", 1)[0]
    bad = up_tampered.transactions[0].message.split(b"\r\n\r\n", 1)[0]
    assert b"Authentication-Results: test.proxy;" in good and b"dkim=pass" in good
    assert b"Authentication-Results: test.proxy;" in bad and b"dkim=fail" in bad


async def test_rspamd_rejects_gtube_at_the_end_of_the_message(rspamd: str) -> None:
    codes, up = await relay(rspamd, message(b"Hello,\r\n" + GTUBE))
    assert codes == [250, 250, 354, 554]
    assert not up.transactions and b"DATA" not in up.commands
    codes, up = await relay(rspamd, message(b"Hello, see you at lunch."))
    assert codes == [250, 250, 354, 250]
    assert len(up.transactions) == 1
