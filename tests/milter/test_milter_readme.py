"""The fake-milter example of README's "Using milters" runs as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import dkim
import trio
from milter_support import start_opendkim
from test_milter_opendkim import dns_for

from trio_proxsmtp.testing import FakeUpstream, run_proxy

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    section = README.read_text().split("## Using milters", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1
    return str(blocks[0])


async def test_readme_fake_milter_example_runs() -> None:
    code = example()
    imports = "\n".join(line for line in code.splitlines() if line.startswith("from "))
    body = "\n".join(line for line in code.splitlines() if not line.startswith("from "))
    namespace: dict[str, Any] = {}
    exec(imports + "\n\nasync def main():\n" + textwrap.indent(body, "    "), namespace)
    await namespace["main"]()


def config_block(first_line: str) -> str:
    """The README block of "Using milters" that starts with this comment line."""
    section = README.read_text().split("## Using milters", 1)[1].split("\n## ", 1)[0]
    for block in re.findall(r"```\n(.*?)```", section, re.DOTALL):
        lines = str(block).splitlines()
        if lines and lines[0] == first_line:
            return "\n".join(lines[1:])
    raise AssertionError(f"no block {first_line!r} in README's Using milters")


def test_readme_opendkim_example_signs_through_the_proxy(tmp_path: Path) -> None:
    """README's opendkim.conf and proxsmtpd.conf, with a free port and a key made here."""
    settings = config_block("# opendkim.conf")
    proxy_config = config_block("# proxsmtpd.conf")
    values = dict(line.split(None, 1) for line in settings.splitlines())
    domain, selector = values["Domain"], values["Selector"]
    for opendkim in start_opendkim(tmp_path, settings, domain, selector):
        readme_port = values["Socket"].split(":")[1].split("@")[0]
        port = opendkim.address.rsplit(":", 1)[1]
        assert f"inet:127.0.0.1:{readme_port}" in proxy_config
        config = proxy_config.replace(f":{readme_port}", f":{port}")
        message = (
            f"From: someone@{domain}\r\nTo: b@example.org\r\nSubject: hi\r\n"
            f"Message-ID: <1@{domain}>\r\n\r\nhello\r\n"
        ).encode()
        received = trio.run(relay_one, config, message)
        assert received.startswith(b"DKIM-Signature: ") and received.endswith(message)
        assert dkim.verify(received, dnsfunc=dns_for(opendkim))


async def relay_one(config: str, message: bytes) -> bytes:
    with trio.fail_after(30):
        async with (
            FakeUpstream() as up,
            run_proxy(config, upstream=up) as proxy,
            proxy.connect() as client,
        ):
            replies = await client.send_message("someone@x", ["b@example.org"], message)
            assert [r.code for r in replies] == [250, 250, 354, 250]
            await client.command("QUIT")
    [t] = up.transactions
    return t.message
