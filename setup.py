"""Build hook: ship the example config, contrib/ and the man pages inside the package.

They stay where people look for them in a clone (the repository root, contrib/, man/);
the wheel carries copies under trio_proxsmtp/_data/, which ``python -m
trio_proxsmtp.example`` prints. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
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


setup(cmdclass={"build_py": BuildPyWithData})
