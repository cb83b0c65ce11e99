"""Issue 23, the session's part: XCLIENT with every attribute the next server lists (over
several lines when one would pass 512 bytes), XFORWARD (XForward: on) before each MAIL with
the client's own refused, and REQUIRETLS offered only over TLS on both hops
(docs/behaviour.md §11.12, §11.14)."""

from __future__ import annotations

import attrs
import pytest
from test_protocol_session import OK, Driver, ready

from trio_proxsmtp.protocol.session.actions import Purpose, SendUpstream
from trio_proxsmtp.protocol.session.events import (
    ClientCommand,
    ClientTLSActive,
    UpstreamReply,
    UpstreamTLSActive,
)
from trio_proxsmtp.protocol.session.extensions import REQUIRETLS_UNAVAILABLE
from trio_proxsmtp.protocol.session.policy import SessionPolicy
from trio_proxsmtp.protocol.session.wire import INSUFFICIENT_AUTHORIZATION
from trio_proxsmtp.protocol.session.xclient import LINE_MAX, UNAVAILABLE, pack
from trio_proxsmtp.protocol.session.xforward import XFORWARD_REFUSED
from trio_proxsmtp.protocol.smtp.commands import parse_command, xtext_decode
from trio_proxsmtp.protocol.smtp.replies import Reply

GREETED = Reply.single(220, "up.example ESMTP")
EVERY_XCLIENT = "XCLIENT ADDR PORT NAME HELO PROTO DESTADDR DESTPORT LOGIN"
EVERY_XFORWARD = "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"
EHLO_FULL = Reply(250, ("up.example", "PIPELINING", EVERY_XCLIENT, EVERY_XFORWARD))
POLICY = SessionPolicy(
    client="203.0.113.9",
    client_port=40123,
    destination="192.0.2.10",
    destination_port=25,
    xclient_name="mx.client.example",
)


def attributes(line: bytes) -> dict[str, str]:
    """NAME=VALUE pairs of an XCLIENT/XFORWARD line, xtext-decoded."""
    pairs = line.decode("ascii").split()[1:]
    return {name: xtext_decode(value) for name, _, value in (p.partition("=") for p in pairs)}


# -- XCLIENT ---------------------------------------------------------------------------


def test_xclient_sends_every_listed_attribute_it_knows() -> None:
    d = ready(attrs.evolve(POLICY, xclient=True), ehlo=EHLO_FULL)
    assert d.command("MAIL FROM:<s@x>", GREETED, EHLO_FULL, OK) == [OK]
    [line] = [u for u in d.upstream if u.startswith(b"XCLIENT")]
    assert attributes(line) == {
        "ADDR": "203.0.113.9",
        "NAME": "mx.client.example",
        "PORT": "40123",
        "PROTO": "ESMTP",
        "DESTADDR": "192.0.2.10",
        "DESTPORT": "25",
        "HELO": "c",
    }  # LOGIN is listed but unknown (AUTH passes through unread): never sent
    assert d.upstream[-2:] == [b"EHLO c\r\n", b"MAIL FROM:<s@x>\r\n"]


def test_xclient_sends_only_what_the_next_server_lists() -> None:
    policy = attrs.evolve(POLICY, xclient=True)
    d = ready(policy, ehlo=Reply(250, ("up.example", "XCLIENT ADDR PORT")))
    d.command("NOOP", GREETED, Reply(250, ("up.example", "XCLIENT ADDR PORT")), OK)
    assert d.upstream[1] == b"XCLIENT ADDR=203.0.113.9 PORT=40123\r\n"


def test_xclient_proto_is_smtp_after_helo_and_ipv6_destination_prefixed() -> None:
    policy = SessionPolicy(
        client="2001:db8::7",
        client_is_ipv6=True,
        client_port=5,
        destination="2001:db8::25",
        destination_port=25,
        xclient=True,
    )
    d = Driver(policy)
    d.greet()
    d.command("HELO c", Reply.single(250, "up"))
    d.command("NOOP", GREETED, Reply.single(250, "up"), OK)
    # After HELO nothing is listed: ADDR, NAME and HELO are assumed, as before.
    assert attributes(d.upstream[1]) == {"ADDR": "IPv6:2001:db8::7", "HELO": "c"}
    d = ready(policy, ehlo=EHLO_FULL)
    d.command("NOOP", GREETED, EHLO_FULL, OK)
    sent = attributes(d.upstream[1])
    assert sent["DESTADDR"] == "IPv6:2001:db8::25" and sent["PROTO"] == "ESMTP"


LONG_NAME = ".".join(["n" * 60] * 4)  # 243 bytes: a host name Postfix takes
LONG_HELO = "h" * 250


def long_identity() -> Driver:
    d = Driver(attrs.evolve(POLICY, xclient=True, xclient_name=LONG_NAME))
    d.greet()
    d.command(f"EHLO {LONG_HELO}", EHLO_FULL)
    return d


def test_xclient_over_512_bytes_goes_as_several_commands_each_greeted() -> None:
    # NAME= and HELO= near their 255 bytes do not fit one line with the rest: two XCLIENT
    # commands, each answered by a greeting, then the EHLO once.
    d = long_identity()
    d.command("NOOP", GREETED, GREETED, EHLO_FULL, OK)
    lines = [u for u in d.upstream if u.startswith(b"XCLIENT")]
    assert len(lines) == 2
    assert all(len(line) <= LINE_MAX for line in lines)
    merged = {**attributes(lines[0]), **attributes(lines[1])}
    assert (merged["NAME"], merged["HELO"]) == (LONG_NAME, LONG_HELO)
    assert merged["ADDR"] == "203.0.113.9" and merged["DESTPORT"] == "25"
    assert d.upstream[-3:] == [lines[1], f"EHLO {LONG_HELO}\r\n".encode(), b"NOOP\r\n"]


@pytest.mark.parametrize(
    ("helo", "sent"),
    [
        ("\u00e9" * 42, "+C3+A9" * 42),  # 252 bytes encoded
        ("\u00e9" * 43, UNAVAILABLE),  # 258 bytes encoded, though 86 decoded
        ("x" * 255, "x" * 255),
        ("x" * 256, UNAVAILABLE),
    ],
)
def test_a_value_is_within_255_bytes_as_sent_encoded(helo: str, sent: str) -> None:
    # Postfix 3.7 refuses "501 5.5.4 Error: attribute value too long" past 255 encoded bytes.
    d = Driver(attrs.evolve(POLICY, xclient=True, xforward=True))
    d.greet()
    d.command(f"EHLO {helo}", EHLO_FULL)
    d.command("MAIL FROM:<s@x>", GREETED, EHLO_FULL, OK, OK)
    ours = [u for u in d.upstream if u.startswith((b"XCLIENT", b"XFORWARD"))]
    assert len(ours) == 2
    assert {line.split(b" HELO=")[1].split()[0].decode() for line in ours} == {sent}


@pytest.mark.parametrize("size", [1, 200, 509, 600, 3000])
def test_pack_never_makes_a_line_over_512_bytes(size: int) -> None:
    notes: list[object] = []
    lines = pack("XCLIENT", [("ADDR", "192.0.2.1"), ("HELO", "x" * size)], notes)  # type: ignore[arg-type]
    assert all(len(line) <= LINE_MAX and line.endswith(b"\r\n") for line in lines)
    helo = {k: v for line in lines for k, v in attributes(line).items()}["HELO"]
    assert helo == ("x" * size if size + len(" HELO=") <= LINE_MAX - 9 else UNAVAILABLE)
    assert bool(notes) == (helo == UNAVAILABLE)


def test_a_second_xclient_refused_fails_closed() -> None:
    d = long_identity()
    replies = d.command("NOOP", GREETED, Reply.single(501, "5.5.4 Error: attribute value too long"))
    assert replies[0].code == 421
    assert sum(u.startswith(b"XCLIENT") for u in d.upstream) == 2


# -- XFORWARD --------------------------------------------------------------------------


def xforward_policy(**changes: object) -> SessionPolicy:
    return attrs.evolve(POLICY, xforward=True, **changes)  # type: ignore[misc]


def test_xforward_before_each_mail_with_its_attributes() -> None:
    d = ready(xforward_policy(), ehlo=EHLO_FULL)
    assert d.command("MAIL FROM:<s@x>", OK, OK) == [OK]
    xforward, mail = d.upstream[-2:]
    assert mail == b"MAIL FROM:<s@x>\r\n"
    assert attributes(xforward) == {
        "NAME": "mx.client.example",
        "ADDR": "203.0.113.9",
        "PORT": "40123",
        "PROTO": "ESMTP",
        "HELO": "c",
        "SOURCE": "REMOTE",
    }
    d.command("RSET", OK)
    d.command("MAIL FROM:<t@x>", OK, OK)  # after RSET: again
    assert [u.split()[0] for u in d.upstream[-3:]] == [b"RSET", b"XFORWARD", b"MAIL"]
    assert sum(u.startswith(b"XFORWARD") for u in d.upstream) == 2


def test_xforward_source_local_and_unknown_name() -> None:
    d = ready(xforward_policy(client_local=True, xclient_name=None), ehlo=EHLO_FULL)
    d.command("MAIL FROM:<s@x>", OK, OK)
    sent = attributes(d.upstream[-2])
    assert sent["SOURCE"] == "LOCAL" and sent["NAME"] == UNAVAILABLE


def test_xforward_not_sent_when_not_offered_or_off() -> None:
    d = ready(xforward_policy(), ehlo=Reply(250, ("up.example", "SIZE 1000")))
    d.command("MAIL FROM:<s@x>", OK)
    d2 = ready(SessionPolicy(client="192.0.2.1"), ehlo=EHLO_FULL)
    d2.command("MAIL FROM:<s@x>", OK)
    assert not any(u.startswith(b"XFORWARD") for u in d.upstream + d2.upstream)


def test_a_listed_keyword_with_nothing_we_know_sends_no_bare_command() -> None:
    # A bare XCLIENT/XFORWARD (or only attributes we never send) would be refused with 501:
    # a failed XCLIENT closes the connection, a failed XFORWARD fails every MAIL.
    ehlo = Reply(250, ("up.example", "XCLIENT LOGIN", "XFORWARD IDENT"))
    policy = attrs.evolve(xforward_policy(), xclient=True)
    d = ready(policy, ehlo=ehlo)
    assert d.command("MAIL FROM:<s@x>", OK) == [OK]
    assert d.upstream[-1] == b"MAIL FROM:<s@x>\r\n"
    assert not any(u.startswith((b"XCLIENT", b"XFORWARD")) for u in d.upstream)
    assert pack("XFORWARD", [], []) == []


def test_forged_client_xforward_refused_never_forwarded() -> None:
    d = ready(xforward_policy(), ehlo=EHLO_FULL)
    before = list(d.upstream)
    replies = d.command("XFORWARD ADDR=6.6.6.6 NAME=trusted.example SOURCE=LOCAL")
    assert replies == [INSUFFICIENT_AUTHORIZATION]
    assert d.upstream == before
    assert any("refused the client's XFORWARD" in log.message for log in d.logs())


def test_client_xforward_passes_and_is_offered_when_off() -> None:
    d = ready(SessionPolicy(client="192.0.2.1"), ehlo=EHLO_FULL)
    assert any(line.startswith("XFORWARD") for line in d.client[-1].lines)
    d.command("XFORWARD ADDR=192.0.2.7", OK)
    assert d.upstream[-1] == b"XFORWARD ADDR=192.0.2.7\r\n"


def test_xforward_withdrawn_from_the_clients_ehlo_reply() -> None:
    d = ready(xforward_policy(), ehlo=EHLO_FULL)
    assert not any(line.startswith("XFORWARD") for line in d.client[-1].lines)


def test_refused_xforward_answers_the_mail_with_451() -> None:
    d = ready(xforward_policy(), ehlo=EHLO_FULL)
    replies = d.command("MAIL FROM:<s@x>", Reply.single(550, "5.7.0 not authorized"))
    assert replies == [XFORWARD_REFUSED]
    assert not any(u.startswith(b"MAIL") for u in d.upstream)


def test_mail_with_xforward_is_not_pipelined() -> None:
    d = ready(xforward_policy(), ehlo=EHLO_FULL)
    mail = parse_command(b"MAIL FROM:<s@x>\r\n")
    assert not d.session.pipelinable(mail)
    [action] = d.session.handle(ClientCommand(mail))
    assert isinstance(action, SendUpstream) and action.purpose is Purpose.XFORWARD
    after = d.session.handle(UpstreamReply(OK, exchange=action))
    assert [a.line for a in after if isinstance(a, SendUpstream)] == [b"MAIL FROM:<s@x>\r\n"]


# -- REQUIRETLS ------------------------------------------------------------------------

EHLO_REQUIRETLS = Reply(250, ("up.example", "REQUIRETLS", "SIZE 1000"))


def tls_driver(*, client_tls: bool, verified: bool, upstream_tls: bool) -> Driver:
    d = Driver(SessionPolicy(client="192.0.2.1", verified_tls_hop=verified))
    if client_tls:
        d.session.handle(ClientTLSActive())
    if upstream_tls:
        d.session.handle(UpstreamTLSActive())
    d.greet()
    d.command("EHLO c", EHLO_REQUIRETLS)
    return d


def test_requiretls_offered_over_tls_with_a_verified_next_hop() -> None:
    d = tls_driver(client_tls=True, verified=True, upstream_tls=True)
    assert "REQUIRETLS" in d.client[-1].lines
    assert d.command("MAIL FROM:<s@x> REQUIRETLS", OK) == [OK]
    assert d.upstream[-1] == b"MAIL FROM:<s@x> REQUIRETLS\r\n"


@pytest.mark.parametrize(
    ("client_tls", "verified", "upstream_tls"),
    [(False, True, True), (True, False, True), (True, True, False), (False, False, False)],
    ids=["plain-client", "unverified-hop", "plain-hop", "all-plain"],
)
def test_requiretls_stripped_and_refused_otherwise(
    client_tls: bool, verified: bool, upstream_tls: bool
) -> None:
    d = tls_driver(client_tls=client_tls, verified=verified, upstream_tls=upstream_tls)
    assert "REQUIRETLS" not in d.client[-1].lines
    before = list(d.upstream)
    assert d.command("MAIL FROM:<s@x> REQUIRETLS") == [REQUIRETLS_UNAVAILABLE]
    assert REQUIRETLS_UNAVAILABLE.code == 530
    assert REQUIRETLS_UNAVAILABLE.lines[0].startswith("5.7.30 ")
    assert d.upstream == before
    assert d.command("MAIL FROM:<s@x>", OK) == [OK]  # without it: forwarded


def test_requiretls_not_offered_when_the_next_server_does_not() -> None:
    d = Driver(SessionPolicy(client="192.0.2.1", verified_tls_hop=True))
    d.session.handle(ClientTLSActive())
    d.session.handle(UpstreamTLSActive())
    d.greet()
    d.command("EHLO c", Reply(250, ("up.example", "SIZE 1000")))
    assert "REQUIRETLS" not in d.client[-1].lines
    assert d.command("MAIL FROM:<s@x> requiretls") == [REQUIRETLS_UNAVAILABLE]
