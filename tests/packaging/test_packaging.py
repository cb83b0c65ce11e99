"""What a wheel ships: py.typed, the example config, contrib/, the man pages, the LICENSE.

The wheel is built from a copy of the source tree (so the checkout gets no build/), with
the test environment's setuptools, and its example command is run from the unpacked wheel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_INSTALL = (
    "python3 -m venv /opt/trio-proxsmtpd\n"
    "    /opt/trio-proxsmtpd/bin/pip install -r requirements.txt .\n"
)
VENV_SCRIPT = "/opt/trio-proxsmtpd/bin/trio-proxsmtpd"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".mtas"
        ),
    )
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("-q", "-w", str(base / "out"), str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = (base / "out").glob("trio_proxsmtp-*.whl")
    return built


def test_the_wheel_ships_what_admins_and_type_checkers_need(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "trio_proxsmtp/py.typed",
        "trio_proxsmtp/_data/proxsmtpd.conf.example",
        "trio_proxsmtp/_data/contrib/postfix/before-queue.master.cf",
        "trio_proxsmtp/_data/contrib/filters/clamav.sh",
        "trio_proxsmtp/_data/contrib/trio-proxsmtpd.service",
        "trio_proxsmtp/_data/man/trio-proxsmtpd.8",
    }
    assert expected <= names
    # Pure Python, even when built from a tree with the compiled core (tools/compile.py).
    assert not [name for name in names if name.endswith((".so", ".pyd", ".c"))]
    data = {name.split(".data/", 1)[1] for name in names if ".data/" in name}
    assert {
        "data/share/man/man8/trio-proxsmtpd.8",
        "data/share/man/man5/trio-proxsmtpd.conf.5",
    } <= (data)
    [license_file] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    zf = zipfile.ZipFile(wheel)
    assert b"Copyright (c) 2026, the trio_proxsmtp developers" in zf.read(license_file)
    meta = zf.read(metadata).decode()
    assert "License-Expression: BSD-3-Clause" in meta
    assert "Classifier: Typing :: Typed" in meta and "Project-URL: " in meta


def test_the_example_command_works_from_the_wheel(wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}

    def example(*args: str) -> bytes:
        return subprocess.run(
            [sys.executable, "-m", "trio_proxsmtp.example", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout

    assert example() == (ROOT / "proxsmtpd.conf.example").read_bytes()
    names = example("--list").decode().split()
    assert "contrib/postfix/after-queue.main.cf" in names and "man/trio-proxsmtpd.conf.5" in names
    unit = example("contrib/trio-proxsmtpd.service")
    assert unit == (ROOT / "contrib" / "trio-proxsmtpd.service").read_bytes()
    # the file came from the unpacked wheel, not from this checkout
    located = subprocess.run(
        [sys.executable, "-c", "import trio_proxsmtp.example as e; print(e.shipped_root())"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert located == str(tmp_path / "site" / "trio_proxsmtp" / "_data")


def test_example_refuses_names_outside_the_shipped_files() -> None:
    from trio_proxsmtp.example import main, read_shipped

    with pytest.raises(FileNotFoundError):
        read_shipped("../pyproject.toml")
    assert main(["contrib/../setup.py"]) == 1


def test_man_pages_match_the_readme() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "manpages.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_man_pages_render_without_warnings() -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    for page in ("trio-proxsmtpd.8", "trio-proxsmtpd.conf.5"):
        result = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", str(ROOT / "man" / page)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0 and result.stderr == "", result.stderr
        text = re.sub(".\b", "", result.stdout)  # no overstrike bold
        assert ("COMMAND LINE" if page.endswith(".8") else "CONFIGURATION") in text
        assert "SEE ALSO" in text
        assert "`" not in text  # no Markdown code left over, even broken across lines
        if page.endswith(".8"):
            for heading in ("USING MILTERS", "RUNNING SEVERAL INSTANCES", "METRICS"):
                assert f"\n{heading}\n" in text
            assert "\nTESTING YOUR OWN FILTER\n" in text
        else:
            # the example config an install has: the package's copy, or printed by any
            flat = " ".join(re.sub("\u2010\n *", "", text).split())
            assert "/usr/share/doc/trio-proxsmtp/examples/proxsmtpd.conf.example" in flat
            assert "python -m trio_proxsmtp.example" in flat


def test_service_files_run_the_venv_install_of_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    assert VENV_INSTALL in readme
    for name in ("trio-proxsmtpd.service", "supervisord.conf"):
        text = (ROOT / "contrib" / name).read_text()
        assert all(line.strip() in text for line in VENV_INSTALL.splitlines()), name
        assert f"{VENV_SCRIPT} -d 3 -f /etc/trio-proxsmtpd.conf" in text, name
    # The index has no project of that name: nothing may tell an admin to install it so.
    for text in (readme, *(p.read_text() for p in (ROOT / "contrib").glob("*.*"))):
        assert "pip install trio_proxsmtp" not in text


def _unit(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def test_the_two_units_differ_only_in_the_program_path() -> None:
    venv = _unit(ROOT / "contrib" / "trio-proxsmtpd.service")
    deb = _unit(ROOT / "debian" / "trio-proxsmtp.trio-proxsmtpd.service")
    assert [line.replace(VENV_SCRIPT, "/usr/sbin/trio-proxsmtpd") for line in venv] == deb
    assert "Documentation=man:trio-proxsmtpd(8) man:trio-proxsmtpd.conf(5)" in deb
    # the user the unit runs as is the one the package and the README create
    assert "User=_trio-proxsmtp" in deb and "Group=_trio-proxsmtp" in deb
    postinst = (ROOT / "debian" / "trio-proxsmtp.postinst").read_text()
    assert (
        "adduser --system --group --quiet --no-create-home --home /nonexistent _trio-proxsmtp"
        in postinst
    )
    readme = (ROOT / "README.md").read_text()
    assert "--shell /usr/sbin/nologin _trio-proxsmtp\n" in readme
    # the pages it names are those we make, the package installs and the README installs
    pages = sorted(p.name for p in (ROOT / "man").iterdir())
    assert pages == ["trio-proxsmtpd.8", "trio-proxsmtpd.conf.5"]
    manpages = (ROOT / "debian" / "trio-proxsmtp.manpages").read_text().split()
    assert manpages == [f"man/{page}" for page in pages]
    for page in pages:
        assert f"install -D -m 644 man/{page} /usr/local/share/man/man{page[-1]}/{page}\n" in readme


def test_readme_points_to_postfix_first() -> None:
    """Right after the first two commands, before anything else an admin needs."""
    readme = (ROOT / "README.md").read_text()
    second_command = readme.index(".venv/bin/python -m pytest\n")
    pointer = readme.index("[Postfix](#postfix)")
    assert second_command < pointer
    between = readme[second_command:pointer]
    assert "\n#" not in between and "\n    " not in between.rstrip()
    assert "\n## Postfix\n" in readme


def test_example_config_and_readme_agree_on_a_full_worker() -> None:
    """Both say what daemon/handoff.py does: a full worker leaves new clients to the others,
    and "busy" comes only when every worker is full."""

    def flat(text: str) -> str:
        return " ".join(line.lstrip("# ") for line in text.splitlines())

    example = flat((ROOT / "proxsmtpd.conf.example").read_text())
    readme = flat((ROOT / "README.md").read_text())
    for text in (example, readme):
        assert "holding its share leaves new clients to the others" in text
        assert "only when all are full" in text
    assert "still has room" not in example


def test_the_debian_version_is_the_package_version() -> None:
    import trio_proxsmtp

    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"trio-proxsmtp ({trio_proxsmtp.__version__}) ")
