"""Build hook: ship the example config, contrib/ and the man pages inside the package.

They stay where people look for them in a clone (the repository root, contrib/, man/);
the wheel carries copies under trio_proxsmtp/_data/, which ``python -m
trio_proxsmtp.example`` prints. Everything else is in pyproject.toml.

Optional, off unless asked: with TRIO_PROXSMTP_MYPYC=1 (and mypy installed, so
``pip install --no-build-isolation``) the wheel also carries the sans-IO core compiled by
mypyc (README, "Optional: compiled core"); without it the package is pure Python.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ["proxsmtpd.conf.example", "contrib", "man"]


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "trio_proxsmtp" / "_data"
        for name in SHIPPED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True)
            elif source.exists():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)


def compiled_core_extensions() -> list[object]:
    """TRIO_PROXSMTP_MYPYC=1: the core's modules compiled by mypyc; otherwise none."""
    if os.environ.get("TRIO_PROXSMTP_MYPYC") != "1":
        return []
    sys.path.insert(0, str(ROOT))
    from mypyc.build import mypycify

    from trio_proxsmtp import compiled_core

    os.chdir(ROOT)  # mypyc names the modules from the paths, relative to the tree
    return list(
        mypycify(
            compiled_core.core_sources(),
            opt_level="3",
            group_name=compiled_core.SHARED_LIBRARY_GROUP,
        )
    )


setup(cmdclass={"build_py": BuildPyWithData}, ext_modules=compiled_core_extensions())
