"""The protocol core stays sans-IO: only the standard library, attrs and itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import trio_proxsmtp.protocol as protocol

ALLOWED_THIRD_PARTY = {"attrs"}
FORBIDDEN_STDLIB = {"socket", "ssl", "select", "selectors", "asyncio", "subprocess", "os"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_protocol_imports_no_io() -> None:
    package_dir = Path(protocol.__file__).parent
    own = {
        "errors",
        "lines",
        "commands",
        "replies",
        "ehlo",
        "data",
        "proxy_header",
        "bdat",
        "milter",
        "session",  # the package: every module in it
        "reader",
        "message",  # the package: every module in it
        "__init__",
    }
    checked = set()
    for path in sorted(package_dir.rglob("*.py")):
        top_name = path.relative_to(package_dir).parts[0].removesuffix(".py")
        if top_name not in own:
            continue
        checked.add(top_name)
        for name in imported_modules(path):
            top = name.split(".")[0]
            if name.startswith("trio_proxsmtp."):
                assert name.startswith("trio_proxsmtp.protocol"), (path.name, name)
                continue
            assert top != "trio", (path.name, name)
            assert top not in FORBIDDEN_STDLIB, (path.name, name)
            assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY, (path.name, name)
    assert checked == own
