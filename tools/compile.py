"""Optional: compile the sans-IO core (trio_proxsmtp/protocol/) with mypyc, in place.

    pip install mypy                 # mypyc ships with it; a C compiler and Python headers
    python tools/compile.py          # build the extension modules next to the sources
    python tools/compile.py --clean  # remove them: back to pure Python
    python tools/compile.py --check  # exit 1 unless it is compiled, up to date and imports

Never required: without it (or after --clean) the package is the pure-Python one that
`pip install .` gives.  The import system prefers an extension module to the .py file
beside it, so a source edited after a build is not what runs until the next build:
`trio_proxsmtp.compiled_core.stale()` lists such modules, and the test suite fails on them.
`trio-proxsmtpd -v` says which path is in use.  The modules compiled are those of
`trio_proxsmtp.compiled_core.core_modules()`; NOT_COMPILED there says which stay Python
and why.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trio_proxsmtp import compiled_core  # noqa: E402 (the tree's own, not an installed one)


def built_files() -> list[Path]:
    package = ROOT / "trio_proxsmtp"
    return sorted(p for p in package.rglob("*") if p.suffix in (".so", ".pyd"))


def clean() -> None:
    for path in built_files():
        path.unlink()
    shutil.rmtree(ROOT / "build" / "mypyc", ignore_errors=True)


def build() -> None:
    try:
        from mypyc.build import mypycify  # here: the pure package needs no mypy
    except ImportError:
        sys.exit("tools/compile.py: mypyc not found: pip install mypy (the core stays pure)")
    from setuptools import setup

    clean()
    previous = Path.cwd()
    os.chdir(ROOT)  # mypyc names the modules from paths relative to the tree
    try:
        setup(
            name="trio_proxsmtp_core",
            ext_modules=mypycify(
                compiled_core.core_sources(),
                opt_level="3",
                group_name=compiled_core.SHARED_LIBRARY_GROUP,
                target_dir="build/mypyc",
            ),
            script_args=["-q", "build_ext", "--inplace", "--build-temp", "build/mypyc/temp"],
        )
    finally:
        os.chdir(previous)


def check() -> int:
    if not compiled_core.compiled():
        print(f"the core is not compiled ({compiled_core.describe()})", file=sys.stderr)
        return 1
    stale = compiled_core.stale()
    if stale:
        print(f"stale extension modules (rebuild): {', '.join(stale)}", file=sys.stderr)
        return 1
    for module in compiled_core.core_modules():
        # mypyc compiles some code that fails only when its module runs (an attrs.field
        # class attribute: "int object expected; got _CountingAttr").
        try:
            importlib.import_module(module)
        except Exception as error:
            print(
                f"{module} (or a compiled module it imports) fails at import ({error!r}): "
                "make it compilable (docs/architecture.md, 'The compiled core') or add it "
                "to NOT_COMPILED in trio_proxsmtp/compiled_core.py",
                file=sys.stderr,
            )
            return 1
    print(f"core: {compiled_core.describe()}, {len(compiled_core.core_modules())} modules")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--clean"]:
        clean()
        return 0
    if argv == ["--check"]:
        return check()
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    build()
    return check()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
