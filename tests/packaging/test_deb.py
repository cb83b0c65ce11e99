"""The Debian package: built from the working tree with dh-virtualenv, installed with apt,
exercised, and purged without leaving a file behind (README.md, "Running it as a service").

The .deb is built from a copy of the working tree as git sees it (tracked files as they are
on disk, plus untracked files that are not ignored): what a developer tests is what they
are about to commit, and build products (.venv, build/) stay out. The build pip-installs
requirements.txt into a virtualenv, so it takes about a minute; it runs once per module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from ops_support import free_port, wait_for

from trio_proxsmtp.testing import FakeUpstream, open_client

pytestmark = [pytest.mark.integration, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "trio-proxsmtp"
USER = "_trio-proxsmtp"
# Where the package puts files, and so where a purge must leave nothing of it.
WATCHED = ("/etc", "/opt", "/usr/sbin", "/usr/share/man", "/usr/share/doc", "/lib/systemd")
BUILD_TOOLS = {
    "dpkg-buildpackage": "dpkg-dev",
    "dh_virtualenv": "dh-virtualenv",
    "dh": "debhelper",
    "man": "man-db",
}


def run(*argv: str, cwd: Path | None = None, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result.stdout


def package_status() -> str:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Status}", PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def files_under(roots: tuple[str, ...]) -> set[str]:
    found: set[str] = set()
    for root in roots:
        for directory, dirs, files in os.walk(root):
            found.update(os.path.join(directory, name) for name in (*dirs, *files))
    return found


def working_tree_copy(target: Path) -> None:
    names = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    for name in filter(None, names.split("\0")):
        source = ROOT / name
        if not source.is_file():  # deleted but not yet committed
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for program, debian_package in BUILD_TOOLS.items():
        if shutil.which(program) is None:
            pytest.skip(f"{program} is missing: apt-get install {debian_package}")
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the package is built from a git checkout: apt-get install git")
    if package_status():
        pytest.skip(f"{PACKAGE} is installed on this machine already: the test would purge it")
    base = tmp_path_factory.mktemp("deb")
    source = base / "trio-proxsmtp"
    working_tree_copy(source)
    started = time.monotonic()
    run("dpkg-buildpackage", "-us", "-uc", "-b", cwd=source, timeout=600)
    print(f"dpkg-buildpackage took {time.monotonic() - started:.0f} s")
    (built,) = base.glob(f"{PACKAGE}_*.deb")
    return built


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[set[str]]:
    """Install the package; purge it at the end, whatever happened. Yields the files that
    were there before."""
    before = files_under(WATCHED)
    try:
        run("apt-get", "install", "-y", "-q", str(deb), timeout=300)
        yield before
    finally:
        if package_status():
            run("dpkg", "--purge", PACKAGE, timeout=120)


def test_the_package_holds_its_files_and_none_of_the_c_proxsmtp(deb: Path) -> None:
    listing = run("dpkg-deb", "--contents", str(deb))
    paths = {
        line.split(None, 5)[5].split(" -> ")[0].removeprefix(".") for line in listing.splitlines()
    }
    expected = {
        "/usr/sbin/trio-proxsmtpd",
        "/opt/venvs/trio-proxsmtp/bin/trio-proxsmtpd",
        "/etc/trio-proxsmtpd.conf",
        "/lib/systemd/system/trio-proxsmtpd.service",
        "/usr/share/man/man8/trio-proxsmtpd.8.gz",
        "/usr/share/man/man5/trio-proxsmtpd.conf.5.gz",
        "/usr/share/doc/trio-proxsmtp/examples/trio-proxsmtpd.service",
        "/usr/share/doc/trio-proxsmtp/examples/postfix/before-queue.master.cf",
        "/usr/share/doc/trio-proxsmtp/examples/filters/clamav.sh",
        "/usr/share/doc/trio-proxsmtp/examples/proxsmtpd.conf.example",
    }
    assert expected <= paths
    conffiles = run("dpkg-deb", "--info", str(deb), "conffiles").split()
    assert conffiles == ["/etc/trio-proxsmtpd.conf"]
    control = run("dpkg-deb", "--field", str(deb), "Depends")
    assert "python3." in control and "adduser" in control
    # Pinned dependencies: the venv holds exactly the versions of requirements.txt.
    pins = [
        line.replace("_", "-").lower()
        for line in (ROOT / "requirements.txt").read_text().split("\n")
        if line and not line.startswith("#")
    ]
    for pin in pins:
        name, version = pin.split("==")
        assert any(
            f"-packages/{name.replace('-', '_')}-{version}.dist-info/" in path.lower()
            for path in paths
        ), pin
    # The C proxsmtp package can stay installed beside it: no file of it is ours.
    if shutil.which("proxsmtpd") is None:
        pytest.skip("the C proxsmtp is not installed: apt-get install proxsmtp")
    theirs = set(run("dpkg", "-L", "proxsmtp").split("\n"))
    assert paths & theirs == set()  # directories are listed with a "/" here, not there


async def test_installed_program_checks_serves_and_purges_clean(
    installed: set[str], tmp_path: Path
) -> None:
    # The unit is enabled, for the user that postinst made; it verifies.
    run("getent", "passwd", USER)
    assert Path("/etc/systemd/system/multi-user.target.wants/trio-proxsmtpd.service").exists()
    if shutil.which("systemd-analyze"):
        run("systemd-analyze", "verify", "/lib/systemd/system/trio-proxsmtpd.service")
    assert run("man", "-w", "trio-proxsmtpd").strip() == "/usr/share/man/man8/trio-proxsmtpd.8.gz"
    assert run("man", "-w", "5", "trio-proxsmtpd.conf").strip().endswith("trio-proxsmtpd.conf.5.gz")
    assert "config OK" in run("/usr/sbin/trio-proxsmtpd", "-t", "-f", "/etc/trio-proxsmtpd.conf")

    # Serve: the installed config with free ports, as the package's user, from the
    # installed program (not through systemd).
    port = free_port()
    config = tmp_path / "trio-proxsmtpd.conf"
    log = tmp_path / "proxy.log"
    async with FakeUpstream() as upstream:
        text = Path("/etc/trio-proxsmtpd.conf").read_text()
        assert "\nListen: 127.0.0.1:10025\n" in text  # loopback only, as shipped
        text = text.replace("\nListen: 127.0.0.1:10025\n", f"\nListen: 127.0.0.1:{port}\n")
        text = text.replace(
            "\nOutAddress: 127.0.0.1:10026\n", f"\nOutAddress: {upstream.address}\n"
        )
        config.write_text(text + f"User: {USER}\nWorkers: 1\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["/usr/sbin/trio-proxsmtpd", "-d", "3", "-f", str(config)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            with trio.fail_after(20):
                await wait_for(lambda: "listening on" in log.read_text() or proc.poll() is not None)
                assert proc.poll() is None, log.read_text()
                async with open_client("127.0.0.1", port) as client:
                    await client.greeting()
                    replies = await client.send_message(
                        "a@example.org", ["b@example.org"], b"Subject: deb\r\n\r\nhello\r\n"
                    )
                    assert replies[-1].code == 250, replies
        finally:
            proc.terminate()
            proc.wait(40)
        assert [t.message for t in upstream.transactions] == [b"Subject: deb\r\n\r\nhello\r\n"]

    # Purge: nothing of it stays behind (the package's user stays, as Debian does).
    run("dpkg", "--purge", PACKAGE, timeout=120)
    assert package_status() == ""
    assert sorted(files_under(WATCHED) - installed) == []
