"""A wheel built with TRIO_PROXSMTP_MYPYC=1 carries the compiled core and runs on it (README,
"Optional: compiled core"); the default wheel is pure (tests/packaging/test_packaging.py).

Built from a copy of the source tree without any extension module, with the test
environment's setuptools and mypy (`--no-build-isolation`): mypyc compiles the core, which
takes a minute or two.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from trio_proxsmtp import compiled_core

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler: apt-get install build-essential")
    if not Path(sysconfig.get_paths()["include"], "Python.h").is_file():
        pytest.skip("no Python headers: apt-get install python3-dev")
    base = tmp_path_factory.mktemp("compiled-wheel")
    source = base / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".mtas",
            "*.so",
        ),
    )  # fmt: skip
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("-q", "-w", str(base / "out"), str(source)),
        ],
        env={**os.environ, "TRIO_PROXSMTP_MYPYC": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (base / "out").glob("trio_proxsmtp-*.whl")
    return built


def test_the_compiled_wheel_carries_every_core_module_and_its_source(
    compiled_wheel: Path,
) -> None:
    names = zipfile.ZipFile(compiled_wheel).namelist()
    extensions = {name.split(".")[0] for name in names if name.endswith(".so")}
    expected = {module.replace(".", "/") for module in compiled_core.core_modules()}
    assert expected | {"trio_proxsmtp/protocol/core__mypyc"} == extensions
    for module in compiled_core.core_modules():  # the source stays beside it
        assert module.replace(".", "/") + ".py" in names
    assert "-none-any" not in compiled_wheel.name  # a platform wheel


def test_the_compiled_wheel_runs_on_the_compiled_core(compiled_wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(compiled_wheel).extractall(tmp_path / "site")
    script = (
        "from trio_proxsmtp import compiled_core\n"
        "from trio_proxsmtp.protocol.smtp import commands\n"
        "command = commands.parse_command(b'MAIL FROM:<a@example.org> SIZE=10\\r\\n')\n"
        "print(compiled_core.describe(), commands.__file__.endswith('.py'), command.address)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.split() == ["compiled", "(mypyc)", "False", "a@example.org"]
