"""`python -m trio_proxsmtp.testing filter`: a FilterCommand run on a file, as the proxy would."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import trio_proxsmtp
from trio_proxsmtp.testing.__main__ import main

REPO = Path(trio_proxsmtp.__file__).resolve().parent.parent


@pytest.fixture
def eml(tmp_path: Path) -> Path:
    path = tmp_path / "m.eml"
    path.write_bytes(b"Subject: hi\nFrom: a@b\n\nbody\n")  # LF, as saved on Unix
    return path


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["filter", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_deliver_shows_a_diff(eml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = check(
        capsys, "--command", "sed s/^Subject:\\ /Subject:\\ [x]\\ /", "--rcpt", "r@x", str(eml)
    )
    assert status == 0
    assert out.splitlines() == [
        "verdict: deliver (exit 0)",
        "--- message",
        "+++ delivered",
        "@@ -1,4 +1,4 @@",
        "-Subject: hi",
        "+Subject: [x] hi",
        " From: a@b",
        " ",
        " body",
    ]


def test_the_filter_sees_crlf_and_the_envelope(
    eml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen = tmp_path / "seen"
    command = (
        f'cat > {seen}; printf "%s|%s|%s|%s|%s" "$SENDER" "$RECIPIENTS" "$CLIENT" "$REMOTE"'
        f' "$REMOTE_HELO" >> {seen}; cat {seen}'
    )
    argv = ["--command", command, "--sender", "s@x", "--rcpt", "a@x", "--rcpt", "b@x"]
    argv += ["--client", "192.0.2.7", "--remote", "198.51.100.1", "--remote-helo", "h.example"]
    status, out, _ = check(capsys, *argv, str(eml))
    assert status == 0
    assert seen.read_bytes() == (
        b"Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\ns@x|a@x\nb@x|192.0.2.7|198.51.100.1|h.example"
    )
    assert "+b@x|192.0.2.7|198.51.100.1|h.example" in out.splitlines()


def test_null_sender_by_default(eml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = check(capsys, "--command", 'echo "$SENDER" >&2; exit 1', str(eml))
    assert (status, out) == (1, "verdict: reject (exit 1)\nreply: 550 Content Rejected; <>\n")


@pytest.mark.parametrize(
    ("command", "status", "lines"),
    [
        ("cat", 0, ["verdict: deliver (exit 0)", "message unchanged"]),
        (
            "echo '451 4.3.0 later' >&2; exit 1",
            1,
            ["verdict: reject (exit 1)", "reply: 451 4.3.0 later"],
        ),
        (
            "echo '250 gone' >&2; exit 1",
            3,
            [
                "verdict: drop (the client is told the message was accepted) (exit 1)",
                "reply: 250 gone",
            ],
        ),
        ("kill -9 $$", 4, ["verdict: error (killed by signal 9)", "reply: 451 Local Error"]),
    ],
)
def test_verdicts_and_exit_status(
    eml: Path, command: str, status: int, lines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    got, out, _ = check(capsys, "--command", command, str(eml))
    assert (got, out.splitlines()) == (status, lines)


def test_file_mode_and_timeout(eml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = check(
        capsys, "--type", "file", "--command", 'sed -i s/body/edited/ "$EMAIL"', str(eml)
    )
    assert status == 0 and "-body\n+edited\n" in out
    status, out, _ = check(capsys, "--timeout", "0.2", "--command", "sleep 5", str(eml))
    assert status == 4 and out.startswith("verdict: error (timed out after 0.2s)")


def test_takes_the_filter_from_a_config_file(
    eml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text(
        f"OutAddress: 2525\nFilterType: file\nTempDirectory: {tmp_path}\n"
        "FilterCommand: grep -q nothing-like-this $EMAIL\n"
    )
    status, out, _ = check(capsys, "-f", str(conf), str(eml))
    assert (status, out.splitlines()[0]) == (1, "verdict: reject (exit 1)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.eml", "p.conf"]  # spool removed
    conf.write_text("OutAddress: 2525\nFilterType: reject\nFilterReject: 554 go away\n")
    status, out, _ = check(capsys, "-f", str(conf), str(eml))
    assert (status, out) == (1, "verdict: reject (FilterType: reject)\nreply: 554 go away\n")


def test_errors_are_one_line_exit_2(
    eml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check(capsys, str(eml)) == (
        2,
        "",
        "filter: no FilterCommand: give --command or -f CONFIG\n",
    )
    status, _, err = check(capsys, "--command", "/nonexistent/filter", str(eml))
    assert (status, err) == (2, "filter: /nonexistent/filter: No such file or directory\n")
    status, _, err = check(capsys, "--command", "cat", str(tmp_path / "missing.eml"))
    assert (status, err) == (2, f"filter: {tmp_path / 'missing.eml'}: No such file or directory\n")
    status, _, err = check(capsys, "-f", str(tmp_path / "none.conf"), str(eml))
    assert status == 2 and "couldn't open config file" in err


def test_as_a_command(eml: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_proxsmtp.testing", "filter", "--command", "cat", str(eml)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (
        0,
        "verdict: deliver (exit 0)\nmessage unchanged\n",
    )


def test_the_readme_example_runs_without_a_warning(
    eml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (REPO / "README.md").read_text()
    [line] = [x for x in readme.splitlines() if "testing filter --command" in x]
    argv = shlex.split(line.strip())
    argv = argv[argv.index("filter") + 1 :]
    assert argv[-1] == "message.eml"
    status, out, err = check(capsys, *argv[:-1], str(eml))
    assert (status, err) == (0, "")
    assert "+Subject: [x] hi" in out.splitlines()


def test_the_header_option_is_added_as_the_proxy_adds_it(
    eml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "p.conf"
    conf.write_text(
        f"OutAddress: 2525\nTempDirectory: {tmp_path}\nFilterCommand: cat\n"
        "Header: X-Checked: by %l for %i\n"
    )
    status, out, err = check(capsys, "-f", str(conf), "--client", "192.0.2.9", str(eml))
    assert (status, err) == (0, "")
    assert out.splitlines()[-5:] == [
        " Subject: hi",
        " From: a@b",
        "+X-Checked: by 127.0.0.1 for 192.0.2.9",
        " ",
        " body",
    ]
    # --header overrides the config's; a Received: header goes first; a bad symbol warns
    argv = ["--header", "Received: from %i by %l%q", "--local", "198.51.100.2", str(eml)]
    status, out, err = check(capsys, "-f", str(conf), *argv)
    assert status == 0 and err == "filter: warning: Header: invalid header symbol: %q\n"
    assert out.splitlines()[4:6] == ["+Received: from 127.0.0.1 by 198.51.100.2", " Subject: hi"]
    # an empty --header means none
    status, out, _ = check(capsys, "--header", "", "--command", "cat", str(eml))
    assert out == "verdict: deliver (exit 0)\nmessage unchanged\n"


def test_the_variables_of_issue_23(eml: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = ("HELO", "PROTO", "CLIENT_PORT", "TLS", "ID", "DESTINATION")
    fields = " ".join(f'"${{{name}-unset}}"' for name in names)
    command = f"printf '%s|%s|%s|%s|%s|%s' {fields} >&2; exit 1"
    argv = ["--command", command, "--helo", "c.example", "--client-port", "40000"]
    argv += ["--tls", "TLSv1.3 TLS_AES_128_GCM_SHA256", "--id", "ABC", "--destination", "h:25"]
    status, out, _ = check(capsys, *argv, str(eml))
    assert status == 1
    assert "c.example|ESMTP|40000|TLSv1.3 TLS_AES_128_GCM_SHA256|ABC|h:25" in out
    status, out, _ = check(capsys, "--command", command, str(eml))
    assert "unset|unset|unset||unset|unset" in out  # TLS: empty, as without TLS
