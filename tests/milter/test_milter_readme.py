"""The fake-milter example of README's "Using milters" runs as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

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
