"""config/settings.py: every layer's settings, built from one Config."""

from __future__ import annotations

from trio_proxsmtp.config.loader import parse_config
from trio_proxsmtp.config.settings import filter_name, relay_settings
from trio_proxsmtp.relay.settings import OutProxyProtocol, OutTLSMode, TransparentMode
from trio_proxsmtp.stages.settings import FilterSpec, FilterType

BASE = "OutAddress: 127.0.0.1:2525\n"


def test_relay_settings_take_what_each_part_reads() -> None:
    config = parse_config(
        BASE + "TimeOut: 20\nReplyTimeOut: 40\nKeepAlives: 7\nCommandTimeOut: 9\n"
        "MinDataRate: 100\nSessionTimeOut: 0\nStressTimeOut: 3\nHeader: X-Proxied: yes\n"
        "TempDirectory: /var/tmp\n"
    )
    settings = relay_settings(config)
    upstream = settings.upstream
    assert upstream.address == config.out_address
    assert (upstream.timeout, upstream.reply_timeout, upstream.keep_alives) == (20, 40, 7)
    assert upstream.tls is OutTLSMode.OFF and upstream.tls_context is None
    assert upstream.tls_hostname == "127.0.0.1"
    assert upstream.transparent is TransparentMode.OFF
    deadlines = settings.deadlines
    assert (deadlines.timeout, deadlines.command_timeout, deadlines.min_data_rate) == (20, 9, 100)
    assert (deadlines.session_timeout, deadlines.stress_timeout) == (0, 3)
    assert settings.timeout == 20
    transaction = settings.transaction
    assert transaction.filter is None
    assert (transaction.temp_directory, transaction.header) == ("/var/tmp", "X-Proxied: yes")
    assert settings.milters is None and settings.tls_context is None
    assert settings.policy.client == "" and not settings.policy.filtering


def test_the_filter_and_the_milters_only_when_configured() -> None:
    config = parse_config(
        BASE + "FilterCommand: /usr/bin/cat -u\nFilterType: file\nFilterTimeout: 12\n"
        "Milters: inet:127.0.0.1:8891\n"
    )
    settings = relay_settings(config)
    assert settings.transaction.filter == FilterSpec(
        "/usr/bin/cat -u", FilterType.FILE, 12, "/tmp/"
    )
    assert settings.transaction.filter_type is FilterType.FILE
    assert settings.milters is not None and len(settings.milters.milters) == 1
    assert settings.policy.filtering and settings.policy.milters
    assert settings.policy.filter_name == filter_name("/usr/bin/cat -u") == "cat"


def test_the_policy_is_completed_with_the_client() -> None:
    settings = relay_settings(parse_config(BASE + "XClient: on\nPipelining: on\n"))
    policy = settings.policy_for("2001:db8::1", True)
    assert (policy.client, policy.client_is_ipv6) == ("2001:db8::1", True)
    assert policy.xclient and policy.pipelining
    assert settings.policy.client == ""  # the template is left as it was


def test_client_identity_options() -> None:
    # Issue 23: XForward, OutProxyProtocol, and what REQUIRETLS and SOURCE= are decided by.
    settings = relay_settings(parse_config(BASE))
    assert not settings.policy.xforward and not settings.policy.verified_tls_hop
    assert settings.upstream.proxy_protocol is OutProxyProtocol.OFF
    config = parse_config(
        BASE + "XForward: on\nOutProxyProtocol: v2\nConnectionLimitExceptions: 192.0.2.0/24\n"
        "OutTLS: encrypt\n"
    )
    settings = relay_settings(config)
    assert settings.policy.xforward and settings.policy.verified_tls_hop
    assert settings.upstream.proxy_protocol is OutProxyProtocol.V2
    local = settings.policy_for("192.0.2.9", False, port=4000, destination="198.51.100.1")
    assert local.client_local and local.client_port == 4000
    assert local.destination == "198.51.100.1" and local.destination_port is None
    assert not settings.policy_for("127.0.0.1", False).client_local  # not in the exceptions
    assert settings.policy_for("", False).client_local  # a unix peer is local
    for unverified in ("OutTLS: may\n", "OutTLS: encrypt\nOutTLSVerify: off\n"):
        assert not relay_settings(parse_config(BASE + unverified)).policy.verified_tls_hop
    assert relay_settings(
        parse_config(BASE + "OutProxyProtocol: V1\n")
    ).upstream.proxy_protocol is (OutProxyProtocol.V1)
