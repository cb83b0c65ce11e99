"""The README's "Testing your own filter" example, kept runnable."""

import re
from pathlib import Path

import trio

from trio_proxsmtp.testing import FakeUpstream, run_proxy

README = Path(__file__).resolve().parents[2] / "README.md"


async def test_my_filter_tags_spam() -> None:
    with trio.fail_after(20):
        async with (
            FakeUpstream() as upstream,
            run_proxy(
                "FilterCommand: sed 's/^Subject: /Subject: [SPAM] /'\n", upstream=upstream
            ) as proxy,
            proxy.connect() as client,
        ):
            await client.greeting()
            replies = await client.send_message(
                "a@example.org", ["b@example.org"], b"Subject: hi\r\n\r\nbuy now\r\n"
            )
            assert replies[-1].code == 250
        assert upstream.transactions[0].message.startswith(b"Subject: [SPAM] hi")


def test_readme_shows_this_example() -> None:
    """If the README's example changes, this file must change with it."""
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None
    source = Path(__file__).read_text()
    for line in block.group(1).strip().splitlines():
        if line.strip() and not line.startswith(("from ", "async def")):
            assert line.strip() in source, line
