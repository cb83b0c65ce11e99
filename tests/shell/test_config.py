"""Config syntax (spec §4), every option (§5) with its default and its validation."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import pytest

from trio_proxsmtp.common.address import AddressKind, parse_address
from trio_proxsmtp.config import options
from trio_proxsmtp.config.loader import (
    load_config,
    load_config_with_warnings,
    parse_config,
    parse_config_with_warnings,
)
from trio_proxsmtp.config.model import Config, ConfigError
from trio_proxsmtp.relay.settings import TransparentMode
from trio_proxsmtp.stages.settings import FilterType

EXAMPLE = Path(__file__).resolve().parents[2] / "proxsmtpd.conf.example"
BASE = "OutAddress: 127.0.0.1:2525\n"


def parse(extra: str) -> Config:
    return parse_config(BASE + extra, "test.conf")


def test_defaults() -> None:
    config = parse_config(BASE, "test.conf")
    assert config.out_address == parse_address("127.0.0.1:2525", 25)
    assert config.listen == parse_address("10025", 10025)
    assert config.listen.is_port_only
    assert config.filter_command is None
    assert config.filter_type is FilterType.PIPE
    assert config.filter_timeout == 30.0
    assert config.filter_reject == "530 Email Rejected"
    assert config.header is None
    assert config.keep_alives == 0.0
    assert config.max_connections == 64
    assert config.pid_file is None
    assert config.skip_authenticated is False
    assert config.temp_directory == "/tmp/"
    assert config.timeout == 180.0
    assert config.transparent_proxy is TransparentMode.OFF
    assert config.user is None
    assert config.xclient is False
    assert config.shutdown_timeout == 30.0
    assert config.max_message_size == 0
    assert config.pipelining is False
    assert config.proxy_protocol is False
    assert config.proxy_protocol_from == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert config.metrics_listen is None
    assert config.path == "test.conf"


def test_config_class_defaults_match_parsed_defaults() -> None:
    assert Config(out_address=parse(BASE).out_address, path="test.conf") == parse("")


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("Listen: 127.0.0.1:2526", "listen", parse_address("127.0.0.1:2526", 10025)),
        ("Listen: [::1]", "listen", parse_address("[::1]", 10025)),
        ("Listen: /tmp/x/proxsmtpd.sock", "listen", parse_address("/tmp/x/proxsmtpd.sock", 0)),
        ("OutAddress: 10026", "out_address", parse_address("10026", 25)),
        ("OutAddress: localhost", "out_address", parse_address("localhost", 25)),
        ("FilterCommand: cat # not a comment", "filter_command", "cat # not a comment"),
        ("FilterCommand:", "filter_command", None),
        ("FilterType: FILE", "filter_type", FilterType.FILE),
        ("FilterType: reject", "filter_type", FilterType.REJECT),
        ("FilterType: Pipe", "filter_type", FilterType.PIPE),
        ("FilterTimeout: 5", "filter_timeout", 5.0),
        ("FilterReject: 554 5.7.1 No thanks", "filter_reject", "554 5.7.1 No thanks"),
        ("FilterReject: Go away", "filter_reject", "Go away"),
        ("FilterReject:", "filter_reject", "530 Email Rejected"),
        ("Header: X-Filtered: by %l: ok", "header", "X-Filtered: by %l: ok"),
        ("Header:   ", "header", None),
        ("KeepAlives: 0", "keep_alives", 0.0),
        ("KeepAlives: 15", "keep_alives", 15.0),
        ("MaxConnections: 1", "max_connections", 1),
        ("MaxConnections: 10239", "max_connections", 10239),
        ("PidFile: /run/p.pid", "pid_file", "/run/p.pid"),
        ("PidFile:", "pid_file", ""),
        ("Skip: Authenticated", "skip_authenticated", True),
        ("TempDirectory: /var/tmp", "temp_directory", "/var/tmp"),  # it must exist
        ("TimeOut: 1", "timeout", 1.0),
        ("TransparentProxy: off", "transparent_proxy", TransparentMode.OFF),
        ("TransparentProxy: No", "transparent_proxy", TransparentMode.OFF),
        ("TransparentProxy: 0", "transparent_proxy", TransparentMode.OFF),
        ("TransparentProxy: F", "transparent_proxy", TransparentMode.OFF),
        ("TransparentProxy: false", "transparent_proxy", TransparentMode.OFF),
        ("TransparentProxy: on", "transparent_proxy", TransparentMode.CLIENT),
        ("TransparentProxy: YES", "transparent_proxy", TransparentMode.CLIENT),
        ("TransparentProxy: 1", "transparent_proxy", TransparentMode.CLIENT),
        ("TransparentProxy: t", "transparent_proxy", TransparentMode.CLIENT),
        ("TransparentProxy: true", "transparent_proxy", TransparentMode.CLIENT),
        ("TransparentProxy: Client", "transparent_proxy", TransparentMode.CLIENT),
        ("TransparentProxy: FULL", "transparent_proxy", TransparentMode.FULL),
        ("User: nobody", "user", "nobody"),
        ("User: 65534", "user", "65534"),
        ("XClient: on", "xclient", True),
        ("XClient: Off", "xclient", False),
        ("ShutdownTimeout: 0", "shutdown_timeout", 0.0),
        ("ShutdownTimeout: 90", "shutdown_timeout", 90.0),
        ("MaxMessageSize: 0", "max_message_size", 0),
        ("MaxMessageSize: 10485760", "max_message_size", 10485760),
        ("Pipelining: on", "pipelining", True),
        ("Pipelining: no", "pipelining", False),
        ("ProxyProtocol: on", "proxy_protocol", True),
        ("ProxyProtocol: off", "proxy_protocol", False),
        (
            "ProxyProtocolFrom: 10.0.0.0/8, 192.0.2.7,[2001:db8::1]",
            "proxy_protocol_from",
            (
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("192.0.2.7/32"),
                ipaddress.ip_network("2001:db8::1/128"),
            ),
        ),
        ("MetricsListen: 127.0.0.1:9100", "metrics_listen", parse_address("127.0.0.1:9100", 0)),
        ("MetricsListen: [::1]:9100", "metrics_listen", parse_address("[::1]:9100", 0)),
        ("MetricsListen: 9100", "metrics_listen", parse_address("9100", 0)),
    ],
)
def test_option_values(line: str, field: str, value: object) -> None:
    assert getattr(parse(line + "\n"), field) == value


@pytest.mark.parametrize(
    ("line", "option", "message"),
    [
        ("OutAddress = 1.2.3.4", None, "invalid config line"),
        ("Nonsense: 1", "Nonsense", "unknown option"),
        ("DebugFiles: on", "DebugFiles", "unknown option"),
        (": value", "", "unknown option"),
        ("OutAddress:", "OutAddress", "invalid socket name or ip"),
        ("OutAddress: 0", "OutAddress", "out of range"),
        ("OutAddress: 1.2.3.4:25 # x", "OutAddress", "invalid socket name or ip"),
        ("OutAddress: no-such-host.invalid", "OutAddress", "couldn't resolve host name"),
        ("Listen: 70000", "Listen", "invalid socket name or ip"),
        ("Listen: no-such-host.invalid:25", "Listen", "couldn't resolve host name"),
        ("FilterType: stream", "FilterType", "must be 'pipe', 'file', 'reject' or 'smtp'"),
        ("FilterType:", "FilterType", "must be 'pipe', 'file', 'reject' or 'smtp'"),
        ("FilterTimeout: 0", "FilterTimeout", "between 1 and"),
        ("FilterTimeout: 10s", "FilterTimeout", "not a decimal integer"),
        ("FilterTimeout: -1", "FilterTimeout", "not a decimal integer"),
        ("FilterTimeout: 1.5", "FilterTimeout", "not a decimal integer"),
        ("FilterTimeout: \u0661", "FilterTimeout", "not a decimal integer"),
        ("FilterTimeout: 99999999999", "FilterTimeout", "between 1 and"),
        ("FilterReject: 250 Fine", "FilterReject", "not a rejection"),
        ("FilterReject: 550 caf\u00e9", "FilterReject", "printable ASCII"),
        ("KeepAlives: -5", "KeepAlives", "not a decimal integer"),
        ("MaxMessageSize: 10M", "MaxMessageSize", "not a decimal integer"),
        ("MaxMessageSize: 99999999999", "MaxMessageSize", "between 0 and"),
        ("KeepAlives: x", "KeepAlives", "not a decimal integer"),
        ("MaxConnections: 0", "MaxConnections", "between 1 and 10239"),
        ("MaxConnections: 10240", "MaxConnections", "between 1 and 10239"),
        ("MaxConnections: abc", "MaxConnections", "not a decimal integer"),
        ("Skip: always", "Skip", "must be 'authenticated'"),
        ("Skip:", "Skip", "must be 'authenticated'"),
        ("TempDirectory:", "TempDirectory", "must not be empty"),
        ("TimeOut: 0", "TimeOut", "between 1 and"),
        ("TimeOut:", "TimeOut", "not a decimal integer"),
        ("TransparentProxy: maybe", "TransparentProxy", "invalid value"),
        ("User:", "User", "must not be empty"),
        ("XClient: client", "XClient", "invalid value"),
        ("ShutdownTimeout: -1", "ShutdownTimeout", "not a decimal integer"),
        ("ProxyProtocol: v2", "ProxyProtocol", "invalid value"),
        ("ProxyProtocolFrom:", "ProxyProtocolFrom", "empty entry"),
        ("ProxyProtocolFrom: 10.0.0.0/8,,::1", "ProxyProtocolFrom", "empty entry"),
        ("ProxyProtocolFrom: 10.0.0.1/8", "ProxyProtocolFrom", "has host bits set"),
        ("ProxyProtocolFrom: lb.example.org", "ProxyProtocolFrom", "not an IP address"),
        ("ProxyProtocolFrom: 10.0.0.0/33", "ProxyProtocolFrom", "not an IP address"),
        ("MetricsListen: 127.0.0.1", "MetricsListen", "needs a port"),
        ("MetricsListen: /run/metrics.sock", "MetricsListen", "not a unix socket"),
        ("MetricsListen: 127.0.0.1:99999", "MetricsListen", "invalid address"),
        ("MetricsListen: no-such-host.invalid:9100", "MetricsListen", "couldn't resolve"),
    ],
)
def test_validation_errors(line: str, option: str | None, message: str) -> None:
    text = "# comment\n\n" + BASE + line + "\nTimeOut: 5\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.conf")
    error = info.value
    assert (error.path, error.line, error.option) == ("bad.conf", 4, option)
    assert message in error.message
    prefix = "bad.conf:4: " if option is None else f"bad.conf:4: {option}: "
    assert str(error) == prefix + error.message


def test_error_names_the_canonical_option_whatever_the_case() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("outaddress: 1.2.3.4\nMAXCONNECTIONS: 0\n", "x.conf")
    assert str(info.value).startswith("x.conf:2: MaxConnections: ")


def test_tls_certificate_and_key(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    config = parse(f"TLSCertificate: {cert}\nTLSKey: {key}\n")
    assert (config.tls_certificate, config.tls_key) == (str(cert), str(key))
    assert (parse("").tls_certificate, parse("").tls_key) == (None, None)


@pytest.mark.parametrize(
    ("lines", "line", "option", "message"),
    [
        ("TLSCertificate: {cert}", 2, "TLSKey", "required with the other TLS option"),
        ("TLSKey: {key}", 2, "TLSCertificate", "required with the other TLS option"),
        ("TLSCertificate: {cert}\nTLSKey: {missing}", 2, "TLSCertificate", "couldn't read"),
        ("TLSCertificate: {key}\nTLSKey: {cert}", 2, "TLSCertificate", "couldn't load"),
    ],
)
def test_tls_errors(
    tls_files: tuple[Path, Path], tmp_path: Path, lines: str, line: int, option: str, message: str
) -> None:
    cert, key = tls_files
    text = BASE + lines.format(cert=cert, key=key, missing=tmp_path / "missing.pem") + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "tls.conf")
    assert (info.value.line, info.value.option) == (line, option)
    assert message in info.value.message


def test_missing_out_address() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("Listen: 2525\n", "x.conf")
    assert str(info.value) == (
        "x.conf: OutAddress: no OutAddress specified (required unless TransparentProxy is on)"
    )


def test_proxy_protocol_from_without_proxy_protocol_warns() -> None:
    _, warnings = parse_config_with_warnings(BASE + "ProxyProtocolFrom: 10.0.0.0/8\n", "t.conf")
    assert warnings == ["ProxyProtocolFrom is ignored while ProxyProtocol is off"]
    on = BASE + "ProxyProtocol: on\nProxyProtocolFrom: 10.0.0.0/8\n"
    assert parse_config_with_warnings(on, "t.conf")[1] == []


def test_transparent_proxy_needs_no_out_address() -> None:
    config, warnings = parse_config_with_warnings("TransparentProxy: full\n")
    assert config.out_address is None
    assert not any("OutAddress" in w for w in warnings)


def test_out_address_ignored_warning() -> None:
    _config, warnings = parse_config_with_warnings(BASE + "TransparentProxy: on\n")
    assert "the OutAddress option will be ignored when TransparentProxy is enabled" in warnings


def test_syntax_comments_case_crlf_colons_duplicates_and_no_final_newline() -> None:
    text = (
        "   # indented comment\r\n"
        "\r\n"
        "outaddress: 1.2.3.4:26\r\n"
        "  LISTEN :  127.0.0.1:2600  \r\n"
        "Header: X-A: b: c\r\n"
        "MaxConnections: 5\r\n"
        "maxconnections: 7"
    )
    config = parse_config(text)
    assert config.out_address == parse_address("1.2.3.4:26", 25)
    assert config.listen.host == "127.0.0.1"
    assert config.listen.port == 2600
    assert config.header == "X-A: b: c"
    assert config.max_connections == 7


def test_no_colon_error_quotes_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("OutAddress 1.2.3.4\n", "x.conf")
    assert str(info.value) == "x.conf:1: invalid config line (no ':'): 'OutAddress 1.2.3.4'"


def test_unix_listen_and_out_address() -> None:
    config = parse("Listen: /tmp/in.sock\nOutAddress: /tmp/out.sock\n")
    assert config.listen.kind is AddressKind.UNIX
    assert config.out_address is not None
    assert config.out_address.path == "/tmp/out.sock"


def test_config_is_frozen() -> None:
    config = parse("")
    with pytest.raises(AttributeError):
        config.timeout = 5.0  # type: ignore[misc]


def test_load_config(tmp_path: Path) -> None:
    path = tmp_path / "p.conf"
    path.write_text(BASE + "TimeOut: 42\n")
    config = load_config(str(path))
    assert config.timeout == 42.0
    assert config.path == str(path)


def test_load_missing_file_is_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.conf")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: couldn't open config file: No such file or directory"


def test_load_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert str(info.value) == f"{tmp_path}: couldn't open config file: Is a directory"


def test_load_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.conf"
    path.write_text(BASE)
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: use a path that cannot be opened
        path = tmp_path / "notadir" / "x.conf"
        (tmp_path / "notadir").write_text("")
    with pytest.raises(ConfigError, match="couldn't open config file"):
        load_config(str(path))


def test_load_rejects_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(BASE.encode() + b"Header: X-A: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.line == 2
    assert "UTF-8" in info.value.message


def test_temp_directory_warnings(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    a_file = tmp_path / "file"
    a_file.write_text("")

    def warnings_for(directory: Path) -> list[str]:
        return parse_config_with_warnings(BASE + f"TempDirectory: {directory}\n")[1]

    assert warnings_for(private) == []
    assert warnings_for(sticky) == []
    assert [w for w in warnings_for(open_dir) if "world-writable" in w]
    # Errors now, not warnings (issue 21; tests/hostile/test_hostile_temp_directory.py).
    with pytest.raises(ConfigError, match="No such file or directory"):
        warnings_for(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not a directory"):
        warnings_for(a_file)


def test_example_config_parses_and_documents_every_option() -> None:
    config, warnings = load_config_with_warnings(str(EXAMPLE))
    assert config.listen == parse_address("127.0.0.1:10025", 10025)
    assert config.out_address == parse_address("127.0.0.1:10026", 25)
    assert config.temp_directory == "/tmp"
    assert warnings == []
    text = EXAMPLE.read_text()
    for canonical, _field, _parser in options.OPTIONS.values():
        assert re.search(rf"^#?{canonical}:", text, re.MULTILINE), canonical


# -- the FilterCommand's program is checked (-t, start-up, reload) ------------------------


def test_missing_filter_program_is_an_error_with_file_and_line() -> None:
    text = "OutAddress: 2525\nFilterCommand: /usr/local/bin/nonexistent-filter --x\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.conf")
    assert str(info.value) == (
        "c.conf:2: FilterCommand: /usr/local/bin/nonexistent-filter: No such file or directory"
    )


def test_filter_program_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "filter.sh"
    script.write_text("#!/bin/sh\ncat\n")
    script.chmod(0o644)
    with pytest.raises(ConfigError, match=rf"c.conf:3: FilterCommand: {script}: not executable"):
        parse_config(f"OutAddress: 2525\n\nFilterCommand: {script}\n", "c.conf")
    with pytest.raises(ConfigError, match=rf"FilterCommand: {tmp_path}: not a regular file"):
        parse_config(f"OutAddress: 2525\nFilterCommand: {tmp_path}\n", "c.conf")
    script.chmod(0o755)
    assert parse_config_with_warnings(f"OutAddress: 2525\nFilterCommand: {script} -x\n")[1] == []


def test_filter_program_searched_in_path() -> None:
    with pytest.raises(ConfigError, match=r"c\.conf:1: FilterCommand: no-such-filter-xyz: no "):
        parse_config("FilterCommand: no-such-filter-xyz -q\nOutAddress: 2525\n", "c.conf")
    assert parse_config_with_warnings("FilterCommand: cat\nOutAddress: 2525\n")[1] == []


def test_shell_filter_command_is_a_warning_not_checked() -> None:
    _, warnings = parse_config_with_warnings(
        "OutAddress: 2525\nFilterCommand: /nonexistent/x | cat\n"
    )
    assert len(warnings) == 1 and "/bin/sh -c" in warnings[0]


def test_reject_filter_type_needs_no_program() -> None:
    config = parse_config("OutAddress: 2525\nFilterType: reject\nFilterCommand: /nonexistent\n")
    assert config.filter_command == "/nonexistent"


@pytest.mark.parametrize(
    ("line", "fixed"),
    [
        ("Listen 127.0.0.1:10025", "Listen: 127.0.0.1:10025"),
        ("outaddress\t[::1]:2525", "OutAddress: [::1]:2525"),
    ],
)
def test_an_option_without_its_colon_says_the_fix(line: str, fixed: str) -> None:
    """`Listen 127.0.0.1:10025` splits at the address's ':' into the name "Listen
    127.0.0.1": still an unknown option, but the error says what was meant (issue 24)."""
    with pytest.raises(ConfigError) as caught:
        parse(line + "\n")
    assert caught.value.line == 2  # after BASE
    assert (
        caught.value.message
        == f"unknown option (a ':' missing after {fixed.split(':')[0]}? {fixed})"
    )


def test_an_unknown_name_with_a_space_gets_no_guess() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("Nonsense 1:2\n")
    assert caught.value.message == "unknown option"
