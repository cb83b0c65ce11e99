"""The optional compiled core (tools/compile.py, README "Optional: compiled core"): which
path is in use, and the check that CI runs the suite on the path it asked for.

CI runs the suite twice: once after `python tools/compile.py` with
TRIO_PROXSMTP_EXPECT_CORE=compiled, once after `--clean` with TRIO_PROXSMTP_EXPECT_CORE=pure;
test_requested_core_is_in_use fails if a build silently did not happen (or was not
cleaned), so the two runs cannot test the same path.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trio_proxsmtp import compiled_core

EXPECT = os.environ.get("TRIO_PROXSMTP_EXPECT_CORE", "")


def test_requested_core_is_in_use() -> None:
    machine = importlib.import_module("trio_proxsmtp.protocol.session.machine")
    loaded_from_source = (machine.__file__ or "").endswith(".py")
    if EXPECT == "compiled":
        assert compiled_core.compiled(), compiled_core.describe()
        assert compiled_core.describe() == "compiled (mypyc)"
        assert not loaded_from_source, machine.__file__
    elif EXPECT == "pure":
        assert compiled_core.describe() == "pure Python"
        assert not compiled_core.compiled()
        assert loaded_from_source, machine.__file__
    else:
        assert EXPECT == "", f"TRIO_PROXSMTP_EXPECT_CORE={EXPECT!r}: compiled or pure"
    # Whatever the path: an extension module older than its source runs the old code.
    assert compiled_core.stale() == []


def test_core_modules_are_the_protocol_layer() -> None:
    modules = compiled_core.core_modules()
    for hot in ("session.machine", "smtp.commands", "smtp.reply_parser", "smtp.data"):
        assert f"trio_proxsmtp.protocol.{hot}" in modules
    assert all(name.startswith("trio_proxsmtp.protocol.") for name in modules)
    assert not any(name.endswith("__init__") for name in modules)
    assert compiled_core.NOT_COMPILED.isdisjoint(modules)
    root = Path(compiled_core.__file__).resolve().parent.parent
    for name in compiled_core.NOT_COMPILED:  # the list names modules that exist
        assert root.joinpath(*name.split(".")).with_suffix(".py").is_file(), name


def test_the_build_tool_agrees_on_the_path_in_use() -> None:
    # tools/compile.py --check: 0 only for a complete, fresh, importable compiled core.
    tool = Path(compiled_core.__file__).resolve().parent.parent / "tools" / "compile.py"
    result = subprocess.run(
        [sys.executable, str(tool), "--check"], capture_output=True, text=True, timeout=120
    )
    fresh = compiled_core.compiled() and not compiled_core.stale()
    assert (result.returncode == 0) == fresh, result.stdout + result.stderr
    if fresh:
        modules = len(compiled_core.core_modules())
        assert result.stdout == f"core: compiled (mypyc), {modules} modules\n"
    else:
        assert "the core is not compiled" in result.stderr or "stale" in result.stderr


@pytest.fixture
def fake_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package `fakecore` with modules a and b, both pure Python, as the core."""
    package = tmp_path / "fakecore"
    package.mkdir()
    for name in ("__init__", "a", "b"):
        (package / f"{name}.py").write_text("")
    monkeypatch.setattr(compiled_core, "_PACKAGE_ROOT", package)  # its parent: tmp_path
    monkeypatch.setattr(compiled_core, "core_modules", lambda: ["fakecore.a", "fakecore.b"])
    return package


def _extension(package: Path, name: str) -> Path:
    path = package / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    path.write_bytes(b"")  # looked for, never loaded
    return path


def test_pure_partly_compiled_and_stale(fake_core: Path) -> None:
    assert (compiled_core.compiled(), compiled_core.describe()) == (False, "pure Python")
    assert compiled_core.stale() == []

    a = _extension(fake_core, "a")
    assert (compiled_core.compiled(), compiled_core.describe()) == (False, "partly compiled")

    b = _extension(fake_core, "b")
    assert (compiled_core.compiled(), compiled_core.describe()) == (True, "compiled (mypyc)")
    assert compiled_core.stale() == []
    for path in (a, b):
        os.utime(path, (1_000_000, 1_000_000))
    os.utime(fake_core / "a.py", (1_000_100, 1_000_100))  # a edited after the build
    os.utime(fake_core / "b.py", (1_000_001, 1_000_001))  # within an installer's slack
    assert compiled_core.stale() == ["fakecore.a"]
