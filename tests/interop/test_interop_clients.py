"""msmtp and curl as the proxy's clients (Exim behind it): plain, STARTTLS, implicit TLS on
ListenTLS, and what each does with the filter's 5xx and 4xx and the next server's refusals
at RCPT and at the final dot. Both are submission clients without a queue: they exit with
a status and print the reply. msmtp exits 69 (EX_UNAVAILABLE) for any refusal at the final
dot, 4xx or 5xx alike, and 65 (EX_DATAERR) for a refused recipient; curl exits 8
(CURLE_WEIRD_SERVER_REPLY) for a refusal at the dot and 55 (CURLE_SEND_ERROR) at RCPT.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import trio
from interop_support import HEADER, message, proxy_config
from mta_support import Exim

from trio_proxsmtp.testing import run_proxy
from trio_proxsmtp.testing.certs import TestCertificates

pytestmark = pytest.mark.integration
MSMTP = "msmtp → proxy"
CURL = "curl → proxy"
EX_DATAERR, EX_UNAVAILABLE = 65, 69  # sysexits.h


def program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return found


async def stored_with(exim: Exim, marker: bytes) -> bytes:
    with trio.move_on_after(15):
        while True:
            for stored in exim.delivered():
                if marker in stored:
                    return stored
            await trio.sleep(0.05)
    raise AssertionError(f"no stored message with {marker!r}:\n{exim.mainlog()}")


async def msmtp(
    tmp_path: Path, port: int, rcpt: str, msg: bytes, *, tls: str = "off", ca: Path | None = None
) -> tuple[int, str]:
    """Run msmtp (tls: off, starttls or implicit); its exit status and log."""
    lines = [
        "account default",
        "host 127.0.0.1",
        f"port {port}",
        "from s@msmtp.test",
        "auth off",
        "domain msmtp.test",
        f"tls {'off' if tls == 'off' else 'on'}",
        f"tls_starttls {'on' if tls == 'starttls' else 'off'}",
        f"tls_trust_file {ca}" if ca else "",
        f"logfile {tmp_path / 'msmtp.log'}",
    ]
    config = tmp_path / "msmtprc"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    argv = [program("msmtp"), "-C", str(config), "-d", rcpt]
    result = await trio.run_process(
        argv, stdin=msg, capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


async def curl(url: str, rcpt: str, msg: bytes, *extra: str) -> tuple[int, str]:
    argv = [program("curl"), "-sS", "-v", "--max-time", "20", url]
    argv += ["--mail-from", "s@curl.test", "--mail-rcpt", rcpt, "-T", "-", *extra]
    result = await trio.run_process(
        argv, stdin=msg, capture_stdout=True, capture_stderr=True, check=False
    )
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


def config_for(tmp_path: Path, certs: TestCertificates) -> str:
    # run_proxy moves ListenTLS to a free port.
    return proxy_config(tmp_path, certs, "ListenTLS: 127.0.0.1:10465")


# -- msmtp ------------------------------------------------------------------------------


@pytest.mark.interop(MSMTP, "PIPELINING")
@pytest.mark.parametrize(
    "tls",
    [
        pytest.param("off", marks=pytest.mark.interop(MSMTP, "plain")),
        pytest.param("starttls", marks=pytest.mark.interop(MSMTP, "STARTTLS")),
        pytest.param("implicit", marks=pytest.mark.interop(MSMTP, "implicit TLS")),
    ],
)
async def test_msmtp_delivers(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates, tls: str
) -> None:
    subject = f"msmtp tls={tls}"
    async with run_proxy(config_for(tmp_path, test_certificates), upstream=exim_address(exim)) as p:
        port = p.tls_port if tls == "implicit" else p.port
        assert port is not None
        status, log = await msmtp(
            tmp_path, port, "r@next.test", message(subject), tls=tls, ca=test_certificates.ca
        )
    assert status == 0, log
    stored = await stored_with(exim, subject.encode())
    assert f"\n{HEADER}\n".encode() in stored
    if tls != "off":
        assert re.search(r"TLS session parameters:.*TLS1\.3", log, re.DOTALL), log
    # msmtp pipelines MAIL, RCPT and DATA (its -d trace: all three sent before a reply).
    assert re.search(
        r"--> MAIL FROM:<s@msmtp\.test>\r?\n--> RCPT TO:<r@next\.test>\r?\n--> DATA\r?\n", log
    )


def exim_address(exim: Exim) -> str:
    return f"127.0.0.1:{exim.port}"


def cell(pair: str, feature: str, *values: object, id: str) -> object:
    return pytest.param(*values, marks=pytest.mark.interop(pair, feature), id=id)


@pytest.mark.parametrize(
    ("rcpt", "header", "status", "reply"),
    [
        cell(
            MSMTP,
            "filter rejection → exit 69",
            *(
                "r@next.test",
                "X-Interop: reject",
                EX_UNAVAILABLE,
                "550 5.7.1 rejected by the interop",
            ),
            id="filter-5xx",
        ),
        cell(
            MSMTP,
            "filter temp failure → exit 69",
            *("r@next.test", "X-Interop: tempfail", EX_UNAVAILABLE, "451 4.7.1 deferred by the"),
            id="filter-4xx",
        ),
        cell(
            MSMTP,
            "next server refuses at RCPT → exit 65",
            *("refuse-rcpt@next.test", "X-Other: 1", EX_DATAERR, "550 refused at RCPT by exim"),
            id="rcpt-refused",
        ),
        cell(
            MSMTP,
            "next server refuses at the dot → exit 69",
            *("refuse-dot@next.test", "X-Other: 1", EX_UNAVAILABLE, "550 refused at the final dot"),
            id="dot-refused",
        ),
    ],
)
async def test_msmtp_failures(
    exim: Exim,
    tmp_path: Path,
    test_certificates: TestCertificates,
    rcpt: str,
    header: str,
    status: int,
    reply: str,
) -> None:
    config = config_for(tmp_path, test_certificates)
    async with run_proxy(config, upstream=exim_address(exim)) as proxy:
        got, log = await msmtp(tmp_path, proxy.port, rcpt, message("msmtp fails", header))
    assert got == status, log
    assert reply in log


# -- curl -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tls",
    [
        pytest.param("off", marks=pytest.mark.interop(CURL, "plain")),
        pytest.param("starttls", marks=pytest.mark.interop(CURL, "STARTTLS")),
        pytest.param("implicit", marks=pytest.mark.interop(CURL, "implicit TLS (smtps://)")),
    ],
)
async def test_curl_delivers(
    exim: Exim, tmp_path: Path, test_certificates: TestCertificates, tls: str
) -> None:
    subject = f"curl tls={tls}"
    async with run_proxy(config_for(tmp_path, test_certificates), upstream=exim_address(exim)) as p:
        extra = ["--cacert", str(test_certificates.ca)]
        if tls == "implicit":
            url = f"smtps://127.0.0.1:{p.tls_port}"
        else:
            url = f"smtp://127.0.0.1:{p.port}"
            if tls == "starttls":
                extra.append("--ssl-reqd")
        status, log = await curl(url, "r@next.test", message(subject), *extra)
    assert status == 0, log
    stored = await stored_with(exim, subject.encode())
    assert f"\n{HEADER}\n".encode() in stored
    if tls != "off":
        assert "SSL connection using TLSv1.3" in log, log
    if tls == "starttls":
        assert "> STARTTLS" in log


@pytest.mark.parametrize(
    ("rcpt", "header", "status", "reply"),
    [
        cell(
            CURL,
            "filter rejection → exit 8",
            *("r@next.test", "X-Interop: reject", 8, "< 550 5.7.1 rejected by the interop"),
            id="filter-5xx",
        ),
        cell(
            CURL,
            "filter temp failure → exit 8",
            *("r@next.test", "X-Interop: tempfail", 8, "< 451 4.7.1 deferred by the interop"),
            id="filter-4xx",
        ),
        cell(
            CURL,
            "next server refuses at RCPT → exit 55",
            *("refuse-rcpt@next.test", "X-Other: 1", 55, "< 550 refused at RCPT by exim"),
            id="rcpt-refused",
        ),
        cell(
            CURL,
            "next server refuses at the dot → exit 8",
            *("refuse-dot@next.test", "X-Other: 1", 8, "< 550 refused at the final dot by exim"),
            id="dot-refused",
        ),
    ],
)
async def test_curl_failures(
    exim: Exim,
    tmp_path: Path,
    test_certificates: TestCertificates,
    rcpt: str,
    header: str,
    status: int,
    reply: str,
) -> None:
    config = config_for(tmp_path, test_certificates)
    async with run_proxy(config, upstream=exim_address(exim)) as proxy:
        url = f"smtp://127.0.0.1:{proxy.port}"
        got, log = await curl(url, rcpt, message("curl fails", header))
    assert got == status, log  # curl has no queue, and no retry for SMTP
    assert reply in log
