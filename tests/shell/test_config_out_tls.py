"""TLS options beyond STARTTLS to clients: OutTLS* (to the next server), ListenTLS, Chunking;
and the contexts tls.py builds for them, tried in real handshakes over memory streams."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_proxsmtp.common.address import parse_address
from trio_proxsmtp.common.tls import TLSError, server_context, sni_name, upstream_context
from trio_proxsmtp.config import checks, options
from trio_proxsmtp.config.loader import parse_config, parse_config_with_warnings
from trio_proxsmtp.config.model import ConfigError
from trio_proxsmtp.daemon import cli
from trio_proxsmtp.relay.settings import OutTLSMode
from trio_proxsmtp.testing.certs import TestCertificates

BASE = "OutAddress: mail.example:25\n"


@pytest.fixture(autouse=True)
def _resolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    """mail.example need not resolve here: only the config's own checks are under test."""
    real = options.resolve_tcp
    monkeypatch.setattr(
        options,
        "resolve_tcp",
        lambda address: [] if address.host == "mail.example" else real(address),
    )


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.conf")
    return info.value


def test_defaults() -> None:
    config = parse_config(BASE, "t.conf")
    assert config.out_tls is OutTLSMode.OFF
    assert config.out_tls_context is None
    assert config.out_tls_verify is None and config.upstream_tls_verify is False
    assert config.listen_tls is None
    assert config.chunking is False
    assert config.upstream_tls_hostname == "mail.example"


@pytest.mark.parametrize(
    ("mode", "verify"),
    [("may", False), ("encrypt", True), ("implicit", True), ("MAY", False)],
)
def test_verification_defaults_per_mode(
    mode: str, verify: bool, test_certificates: TestCertificates
) -> None:
    config = parse_config(f"{BASE}OutTLS: {mode}\nOutTLSCAFile: {test_certificates.ca}\n")
    assert config.out_tls is OutTLSMode(mode.lower())
    assert config.upstream_tls_verify is verify
    context = config.out_tls_context
    assert context is not None
    assert context.verify_mode == (ssl.CERT_REQUIRED if verify else ssl.CERT_NONE)
    assert context.check_hostname is verify
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_verify_can_be_turned_on_for_may_and_off_for_encrypt(
    test_certificates: TestCertificates,
) -> None:
    ca = test_certificates.ca
    on = parse_config(f"{BASE}OutTLS: may\nOutTLSVerify: on\nOutTLSCAFile: {ca}\n")
    assert on.upstream_tls_verify and on.out_tls_context is not None
    assert on.out_tls_context.verify_mode == ssl.CERT_REQUIRED
    off, warnings = parse_config_with_warnings(f"{BASE}OutTLS: encrypt\nOutTLSVerify: off\n")
    assert not off.upstream_tls_verify and off.out_tls_context is not None
    assert off.out_tls_context.verify_mode == ssl.CERT_NONE
    assert warnings == []


def test_server_name_and_hostname() -> None:
    config = parse_config(f"{BASE}OutTLSServerName: relay.example\n")
    assert config.out_tls_server_name == "relay.example"
    assert config.upstream_tls_hostname == "relay.example"
    # An IP OutAddress is the name to check (against IP entries), never SNI.
    ip = parse_config("OutAddress: 192.0.2.1:25\n")
    assert ip.upstream_tls_hostname == "192.0.2.1"
    assert sni_name(ip.upstream_tls_hostname) is None
    assert parse_config("OutAddress: 25\n").upstream_tls_hostname is None  # the client's own
    assert parse_config("OutAddress: /run/up.sock\n").upstream_tls_hostname is None


def test_listen_tls_and_chunking(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    tls = f"TLSCertificate: {cert}\nTLSKey: {key}\n"
    config = parse_config(f"{BASE}{tls}ListenTLS: 127.0.0.1:10465\nChunking: on\n")
    assert config.listen_tls == parse_address("127.0.0.1:10465", 465)
    assert config.chunking is True
    default_port = parse_config(f"{BASE}{tls}ListenTLS: 127.0.0.1\n").listen_tls
    assert default_port is not None and default_port.port == 465  # submissions


def test_client_certificate_loads(test_certificates: TestCertificates) -> None:
    c = test_certificates
    config = parse_config(
        f"{BASE}OutTLS: encrypt\nOutTLSCAFile: {c.ca}\n"
        f"OutTLSCertificate: {c.client_certificate}\nOutTLSKey: {c.client_key}\n"
    )
    assert config.out_tls_certificate == str(c.client_certificate)
    assert config.out_tls_key == str(c.client_key)


@pytest.mark.parametrize(
    ("lines", "line", "option", "message"),
    [
        ("OutTLS: sometimes", 2, "OutTLS", "must be 'off', 'may', 'encrypt' or 'implicit'"),
        ("OutTLSVerify: maybe", 2, "OutTLSVerify", "invalid value"),
        ("OutTLSServerName: a b", 2, "OutTLSServerName", "not a host name"),
        ("OutTLSServerName:", 2, "OutTLSServerName", "not a host name"),
        ("Chunking: lots", 2, "Chunking", "invalid value"),
        ("OutTLSCertificate: {cert}", 2, "OutTLSKey", "required with the other"),
        ("OutTLSKey: {key}", 2, "OutTLSCertificate", "required with the other"),
        ("OutTLS: may\nOutTLSCertificate: {key}\nOutTLSKey: {cert}", 3, "OutTLSCertificate",
         "couldn't load"),
        ("OutTLS: may\nOutTLSCertificate: {missing}\nOutTLSKey: {key}", 3, "OutTLSCertificate",
         "couldn't read"),
        ("OutTLS: encrypt\nOutTLSCAFile: {missing}", 3, "OutTLSCAFile", "couldn't read"),
        ("OutTLS: encrypt\nOutTLSCAFile: {key}", 3, "OutTLSCAFile", "couldn't load"),
        ("ListenTLS: 127.0.0.1:10465", 2, "ListenTLS", "needs TLSCertificate and TLSKey"),
        ("ListenTLS: nonsense:port", 2, "ListenTLS", "invalid socket name"),
    ],
)  # fmt: skip
def test_errors(
    test_certificates: TestCertificates,
    tmp_path: Path,
    lines: str,
    line: int,
    option: str,
    message: str,
) -> None:
    c = test_certificates
    text = lines.format(cert=c.certificate, key=c.key, missing=tmp_path / "missing.pem")
    e = error(f"{BASE}{text}\n")
    assert (e.path, e.line, e.option) == ("t.conf", line, option)
    assert message in e.message


def test_listen_tls_may_not_be_the_listen_address(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    tls = f"TLSCertificate: {cert}\nTLSKey: {key}\n"
    for listen, listen_tls in [("10025", "127.0.0.1:10025"), ("127.0.0.1:25", "127.0.0.1:25")]:
        e = error(f"{BASE}{tls}Listen: {listen}\nListenTLS: {listen_tls}\n")
        assert (e.line, e.option) == (5, "ListenTLS")
        assert "the same address as Listen" in e.message
    parse_config(f"{BASE}{tls}Listen: 127.0.0.1:25\nListenTLS: 127.0.0.2:25\n")


@pytest.mark.parametrize("mode", ["encrypt", "implicit"])
def test_verification_without_any_ca_is_an_error(
    mode: str, monkeypatch: pytest.MonkeyPatch, test_certificates: TestCertificates
) -> None:
    monkeypatch.setattr(checks, "system_ca_available", lambda: False)
    e = error(f"{BASE}OutTLS: {mode}\n")
    assert (e.line, e.option) == (2, "OutTLS")
    assert "set OutTLSCAFile" in e.message
    e = error(f"{BASE}OutTLS: may\nOutTLSVerify: yes\n")
    assert (e.line, e.option) == (3, "OutTLSVerify")
    # Either way out: a CA file, or no verification.
    parse_config(f"{BASE}OutTLS: {mode}\nOutTLSCAFile: {test_certificates.ca}\n")
    parse_config(f"{BASE}OutTLS: {mode}\nOutTLSVerify: off\n")
    parse_config(f"{BASE}OutTLS: may\n")


def test_verifying_a_unix_socket_needs_a_server_name(test_certificates: TestCertificates) -> None:
    ca = test_certificates.ca
    e = error(f"OutAddress: /run/up.sock\nOutTLS: encrypt\nOutTLSCAFile: {ca}\n")
    assert (e.line, e.option) == (2, "OutTLS")
    assert "OutTLSServerName" in e.message
    config = parse_config(
        f"OutAddress: /run/up.sock\nOutTLS: encrypt\nOutTLSCAFile: {ca}\n"
        "OutTLSServerName: mail.example\n"
    )
    assert config.upstream_tls_hostname == "mail.example"


def test_ignored_options_are_warned_about(test_certificates: TestCertificates) -> None:
    _, warnings = parse_config_with_warnings(
        f"{BASE}OutTLSVerify: on\nOutTLSServerName: x.example\n"
    )
    assert warnings == ["OutTLSVerify, OutTLSServerName ignored: OutTLS is off"]
    _, warnings = parse_config_with_warnings(
        f"{BASE}OutTLS: may\nOutTLSCAFile: {test_certificates.ca}\n"
    )
    assert warnings == ["OutTLSCAFile ignored: OutTLSVerify is off"]


# -- the contexts in real handshakes -----------------------------------------------------


class Handshake:
    """Both ends of a handshake over a memory stream pair, and what the server saw."""

    def __init__(self, client_context: ssl.SSLContext, server: ssl.SSLContext) -> None:
        self.sni: list[str | None] = []
        server.sni_callback = self._record_sni
        self.server_context = server
        self.client_context = client_context
        self.error: BaseException | None = None

    def _record_sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.sni.append(name)

    async def run(self, server_hostname: str | None) -> None:
        a, b = trio.testing.memory_stream_pair()
        self.client = trio.SSLStream(a, self.client_context, server_hostname=server_hostname)
        self.server = trio.SSLStream(b, self.server_context, server_side=True)

        async def client_side() -> None:
            try:
                await self.client.do_handshake()
            except trio.BrokenResourceError as exc:
                self.error = exc.__cause__
                await trio.aclose_forcefully(self.client)

        async def server_side() -> None:
            try:
                await self.server.do_handshake()
            except trio.BrokenResourceError:
                await trio.aclose_forcefully(self.server)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_side)
            nursery.start_soon(server_side)


async def test_verified_handshake_by_name_and_by_ip(test_certificates: TestCertificates) -> None:
    c = test_certificates
    context = upstream_context(verify=True, ca_file=str(c.ca))
    for name, sni in [("localhost", "localhost"), ("127.0.0.1", None)]:
        h = Handshake(context, server_context(str(c.certificate), str(c.key)))
        await h.run(name)
        assert h.error is None
        assert h.client.version() in ("TLSv1.2", "TLSv1.3")
        assert h.sni == [sni] and sni_name(name) == sni


@pytest.mark.parametrize("name", ["other.example", "192.0.2.1"])
async def test_wrong_name_fails_verification(
    name: str, test_certificates: TestCertificates
) -> None:
    c = test_certificates
    context = upstream_context(verify=True, ca_file=str(c.ca))
    h = Handshake(context, server_context(str(c.certificate), str(c.key)))
    await h.run(name)
    assert isinstance(h.error, ssl.SSLCertVerificationError)


async def test_untrusted_ca_fails_only_when_verifying(
    test_certificates: TestCertificates, other_certificates: TestCertificates
) -> None:
    c, other = test_certificates, other_certificates
    server = server_context(str(c.certificate), str(c.key))
    h = Handshake(upstream_context(verify=True, ca_file=str(other.ca)), server)
    await h.run("localhost")
    assert isinstance(h.error, ssl.SSLCertVerificationError)
    h = Handshake(upstream_context(verify=False), server)
    await h.run("localhost")
    assert h.error is None and h.client.version() is not None


async def test_client_certificate_is_presented(test_certificates: TestCertificates) -> None:
    c = test_certificates
    server = server_context(str(c.certificate), str(c.key))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cafile=str(c.ca))
    context = upstream_context(
        verify=True,
        ca_file=str(c.ca),
        certificate=str(c.client_certificate),
        key=str(c.client_key),
    )
    h = Handshake(context, server)
    await h.run("localhost")
    assert h.error is None
    peer = h.server.getpeercert()
    assert peer is not None
    assert (("commonName", "client.example"),) in peer["subject"]


def test_upstream_context_errors(test_certificates: TestCertificates, tmp_path: Path) -> None:
    c = test_certificates
    with pytest.raises(TLSError, match="needs both"):
        upstream_context(verify=False, certificate=str(c.client_certificate))
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    with pytest.raises(TLSError):
        upstream_context(verify=True, ca_file=str(empty))


def test_sni_name() -> None:
    assert sni_name("mail.example") == "mail.example"
    assert sni_name("::1") is None and sni_name("[::1]") is None
    assert sni_name("10.0.0.1") is None and sni_name(None) is None


def test_check_flag_reports_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.conf"
    path.write_text(f"{BASE}OutTLS: encrypt\nOutTLSCAFile: {tmp_path}/missing.pem\n")
    assert cli.main(["-t", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"proxsmtpd: {path}:3: OutTLSCAFile: couldn't read")


def test_both_contexts_refuse_tls12_renegotiation(test_certificates: TestCertificates) -> None:
    """A TLS write must never wait to read first (common/tls_socket.py): no renegotiation."""
    c = test_certificates
    for context in (
        upstream_context(verify=True, ca_file=str(c.ca)),
        server_context(str(c.certificate), str(c.key)),
    ):
        assert context.options & ssl.OP_NO_RENEGOTIATION
