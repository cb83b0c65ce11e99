"""Which path the sans-IO core runs on: the pure-Python modules, or extension modules that
`python tools/compile.py` built from them with mypyc, or that a wheel built with
TRIO_PROXSMTP_MYPYC=1 carries (optional; README, "Optional: compiled core").

The extension modules sit next to the sources, and the import system prefers them to the
.py files; `tools/compile.py --clean` removes them.  Nothing here imports the core: it looks
for the extension modules beside the sources.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

__all__ = [
    "CORE_PACKAGE",
    "NOT_COMPILED",
    "SHARED_LIBRARY_GROUP",
    "compiled",
    "core_modules",
    "core_sources",
    "describe",
    "stale",
]

CORE_PACKAGE = "trio_proxsmtp.protocol"
# Modules of the core that stay Python (mypyc, of mypy 2.4, cannot compile them as written):
# errors: exception classes with two bases ("multiple inheritance is not supported");
# replies, envelope: attrs fields with `attrs.field(...)` defaults, which mypyc checks
# against the annotation when the class body runs.
NOT_COMPILED = frozenset(
    {
        f"{CORE_PACKAGE}.errors",
        f"{CORE_PACKAGE}.smtp.replies",
        f"{CORE_PACKAGE}.session.envelope",
    }
)
# The shared library mypyc puts the compiled code and its runtime in: a module of the core
# package (trio_proxsmtp/protocol/core__mypyc*.so), so that it imports wherever the package
# does (an editable install, PYTHONPATH, a wheel).
SHARED_LIBRARY_GROUP = f"{CORE_PACKAGE}.core"
_PACKAGE_ROOT = Path(__file__).resolve().parent
STALE_AFTER = 2.0


def core_modules() -> list[str]:
    """The modules of the core that tools/compile.py compiles (packages' `__init__` and
    NOT_COMPILED left out), found by walking the sources."""
    core = _PACKAGE_ROOT.joinpath(*CORE_PACKAGE.split(".")[1:])
    names = []
    for path in sorted(core.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        parts = path.relative_to(_PACKAGE_ROOT.parent).with_suffix("").parts
        name = ".".join(parts)
        if name not in NOT_COMPILED:
            names.append(name)
    return names


def core_sources() -> list[str]:
    """The source files of `core_modules()`, relative to the tree (what mypyc is given)."""
    return [str(Path(*module.split(".")).with_suffix(".py")) for module in core_modules()]


def _extension(module: str) -> Path | None:
    """The extension module built for `module`, if there is one: next to its source, where
    the import system finds it first.  (A compiled module's own `__file__` and spec are not
    its path on disk, so the files are looked at, not the imported modules.)"""
    source = _PACKAGE_ROOT.parent.joinpath(*module.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = source.with_name(source.name + suffix)
        if path.exists():
            return path
    return None


def compiled() -> bool:
    """True when every module of `core_modules()` is loaded from a compiled extension module;
    False when any of them is pure Python (the default install)."""
    return all(_extension(module) is not None for module in core_modules())


def stale() -> list[str]:
    """The compiled modules whose source is newer than the extension module built from it:
    the extension would run the old code (rebuild with tools/compile.py, or --clean).
    Newer by more than STALE_AFTER seconds: an installer may write the two files of a
    wheel in either order."""
    found = []
    for module in core_modules():
        extension = _extension(module)
        if extension is None:
            continue
        source = extension.parent / f"{module.rsplit('.', 1)[-1]}.py"
        if source.exists() and source.stat().st_mtime > extension.stat().st_mtime + STALE_AFTER:
            found.append(module)
    return found


def describe() -> str:
    """For `-v`: "compiled (mypyc)", "pure Python" or "partly compiled"."""
    flags = [_extension(module) is not None for module in core_modules()]
    if all(flags):
        return "compiled (mypyc)"
    if any(flags):
        return "partly compiled"
    return "pure Python"
