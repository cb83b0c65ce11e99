"""The milter codec and the MTA-side session: round trips, any split, garbage, limits."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_proxsmtp.protocol.milter.codec import (
    PacketDecoder,
    decode_command,
    decode_response,
    encode_connect,
    encode_macros,
    encode_response,
    packet,
)
from trio_proxsmtp.protocol.milter.codes import (
    ALL_ACTIONS,
    MAX_ANSWERS,
    MAX_PACKET_SIZE,
    OFFERED_PROTOCOL,
    MacroStage,
    MilterActions,
    MilterCommand,
    MilterProtocolError,
    Proto,
)
from trio_proxsmtp.protocol.milter.messages import (
    AddHeader,
    AddRecipient,
    ChangeHeader,
    ChangeSender,
    DeleteRecipient,
    InsertHeader,
    MilterVerdict,
    MilterVerdictKind,
    Negotiate,
    Progress,
    Quarantine,
    ReplaceBody,
)
from trio_proxsmtp.protocol.milter.session import MilterSession, Stage, split_body

text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)
names = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
index = st.integers(0, 2**32 - 1)


def reply_verdict(code: str, rest: str) -> MilterVerdict:
    kind = MilterVerdictKind.REJECT if code[0] == "5" else MilterVerdictKind.TEMPFAIL
    return MilterVerdict(kind, f"{code} {rest}")


# A reply line's text: no control character (issue 21: a CR or LF in it is the milter's
# protocol error), after an enhanced status code of the reply code's class.
reply_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


def well_formed_reply(code: str, lines: list[str]) -> MilterVerdict:
    """libmilter's smfi_setmlreply form: "NNN-x.y.z text" lines joined by CRLF, "NNN " last."""
    kind = MilterVerdictKind.REJECT if code[0] == "5" else MilterVerdictKind.TEMPFAIL
    marks = ["-"] * (len(lines) - 1) + [" "]
    joined = "\r\n".join(f"{code}{m}{code[0]}.7.1 {t}" for m, t in zip(marks, lines, strict=True))
    return MilterVerdict(kind, joined)


answers = st.one_of(
    st.sampled_from([MilterVerdict(k) for k in MilterVerdictKind]),
    st.builds(
        well_formed_reply,
        st.sampled_from(["451", "550", "554"]),
        st.lists(reply_text, min_size=1, max_size=4),
    ),
    st.builds(AddHeader, names, text),
    st.builds(InsertHeader, index, names, text),
    st.builds(ChangeHeader, index, names, text),
    st.builds(ChangeSender, text, st.none() | text),
    st.builds(AddRecipient, text, st.none() | text),
    st.builds(DeleteRecipient, text),
    st.builds(ReplaceBody, st.binary(max_size=200)),
    st.builds(Quarantine, text),
    st.just(Progress()),
    st.builds(
        Negotiate,
        st.integers(2, 6),
        st.builds(MilterActions, st.integers(0, 0x1FF)),
        st.builds(Proto, st.integers(0, 0x3FFFFF)),
        st.dictionaries(st.sampled_from(list(MacroStage)), st.lists(names, min_size=1).map(tuple)),
    ),
)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@given(st.lists(answers, max_size=8), st.lists(st.integers(0, 5000), max_size=10))
def test_answers_round_trip_whatever_the_split(items: list[object], cuts: list[int]) -> None:
    wire = b"".join(encode_response(a) for a in items)  # type: ignore[arg-type]
    decoder = PacketDecoder()
    decoded = []
    for piece in splits(wire, cuts):
        decoded.extend(decode_response(c, p) for c, p in decoder.feed(piece))
    assert decoded == items
    assert decoder.pending == 0


@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_garbage_is_a_protocol_error_or_packets_never_a_crash(data: bytes, cuts: list[int]) -> None:
    decoder = PacketDecoder(max_size=200)
    try:
        for piece in splits(data, cuts):
            for code, payload in decoder.feed(piece):
                for decode in (decode_response, decode_command):
                    with contextlib.suppress(MilterProtocolError):
                        decode(code, payload)
    except MilterProtocolError:
        pass


@given(st.integers(MAX_PACKET_SIZE + 1, 2**32 - 1))
def test_oversized_length_is_refused_before_reading_it(size: int) -> None:
    with pytest.raises(MilterProtocolError, match="out of range"):
        PacketDecoder().feed(struct.pack("!I", size) + b"b")


def test_zero_length_packet_is_refused() -> None:
    with pytest.raises(MilterProtocolError):
        PacketDecoder().feed(b"\0\0\0\0")


@pytest.mark.parametrize(
    ("code", "payload"),
    [
        (b"y", b"250 ok\0"),  # a reply code must be 4xx or 5xx
        (b"y", b"550"),  # no NUL
        (b"y", b"550x\0"),
        (b"c", b"extra"),
        (b"h", b"name\0"),  # value missing
        (b"i", b"\0\0"),  # index truncated
        (b"Z", b""),  # unknown
        (b"O", b"\0\0\0\6"),  # truncated negotiation
        (b"O", struct.pack("!IIII", 6, 0, 0, 9) + b"j\0"),  # unknown macro stage
    ],
)
def test_malformed_answers_are_protocol_errors(code: bytes, payload: bytes) -> None:
    with pytest.raises(MilterProtocolError):
        decode_response(code, payload)


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.7.1 no\n250 2.0.0 Ok",  # a bare LF
        "550 5.7.1 no\r250 2.0.0 Ok",  # a bare CR
        "550 5.7.1 no\r\n",  # a CRLF after the last line
        "550-5.7.1 no\r\nthanks",  # a line without the code
        "550-5.7.1 no\r\n\r\n550 5.7.1 thanks",  # an empty line
        "550-5.7.1 one\r\n550-5.7.1 two",  # the last line continues
        "550-5.7.1 more to come",  # a continuation with nothing after it
        "550 5.7.1 one\r\n550 5.7.1 two",  # a line before the last ends the reply
        "550-5.7.1 one\r\n450 4.7.1 two",  # codes differ between lines
        "550-5.7.1 one\r\n551 5.7.1 two",
        "550 4.7.1 try again later",  # an enhanced code of another class
        "451 5.7.1 never",
        "550-5.7.1 one\r\n550 2.0.0 two",
        "550 5.7.1 \x1b[2Jno",  # a control character
        "550 5.7.1 no\x7f",
        "\uff15\uff15\uff10 fullwidth digits",
    ],
)
def test_malformed_replies_are_protocol_errors(reply: str) -> None:
    """Issue 21 item 13 (docs/behaviour.md §6.5); all but the last were taken before."""
    with pytest.raises(MilterProtocolError, match="milter reply"):
        decode_response(b"y", reply.encode() + b"\0")


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("550", MilterVerdictKind.REJECT),
        ("451 4.7.1 later", MilterVerdictKind.TEMPFAIL),
        ("550 5.7.1\ttabbed", MilterVerdictKind.REJECT),
        ("554 no enhanced code", MilterVerdictKind.REJECT),
        ("550-5.7.1 one\r\n550-5.7.1 two\r\n550 5.7.1 three", MilterVerdictKind.REJECT),
        ("421-4.7.0 one\r\n421 4.7.0 two", MilterVerdictKind.TEMPFAIL),
    ],
)
def test_well_formed_replies_decode(reply: str, kind: MilterVerdictKind) -> None:
    assert decode_response(b"y", reply.encode() + b"\0") == MilterVerdict(kind, reply)


@pytest.mark.parametrize(
    "answer", [Progress(), AddHeader("X-Flood", "1"), ReplaceBody(b"x" * 10)], ids=type
)
def test_answers_before_a_verdict_are_bounded(answer: object) -> None:
    """At most MAX_ANSWERS packets before the verdict, counted per stage."""
    session = negotiated(actions=ALL_ACTIONS)
    verdict = MilterVerdict(MilterVerdictKind.CONTINUE)
    for _ in range(2):  # the count starts again with each stage
        session.stage(Stage.EOM)
        got = session.receive(encode_response(answer) * MAX_ANSWERS)  # type: ignore[arg-type]
        assert len(got) == MAX_ANSWERS
        assert session.receive(encode_response(verdict)) == [verdict]
    session.stage(Stage.EOM)
    session.receive(encode_response(answer) * MAX_ANSWERS)  # type: ignore[arg-type]
    with pytest.raises(MilterProtocolError, match=f"more than {MAX_ANSWERS} packets"):
        session.receive(encode_response(answer))  # type: ignore[arg-type]


def test_commands_decode_as_sent() -> None:
    connect = encode_connect("client.test", "4", 2525, "192.0.2.1")
    (code, payload), = PacketDecoder().feed(connect)  # fmt: skip
    command = decode_command(code, payload)
    assert (command.args, command.port, command.family) == (("client.test", "192.0.2.1"), 2525, "4")
    macros = encode_macros(MilterCommand.MAIL, [("{mail_addr}", "a@b"), ("i", "Q1")])
    (code, payload), = PacketDecoder().feed(macros)  # fmt: skip
    command = decode_command(code, payload)
    assert command.macro_for == b"M"
    assert command.macros == {"{mail_addr}": "a@b", "i": "Q1"}


@given(st.lists(st.binary(max_size=200_000), max_size=4))
def test_body_is_cut_in_chunks_of_at_most_65535(chunks: list[bytes]) -> None:
    pieces = list(split_body(chunks))
    assert all(0 < len(p) <= 65535 for p in pieces)
    assert b"".join(pieces) == b"".join(chunks)


def negotiated(
    actions: MilterActions = ALL_ACTIONS,
    protocol: Proto | None = None,
    macros: dict[MacroStage, tuple[str, ...]] | None = None,
) -> MilterSession:
    session = MilterSession()
    out = session.negotiate()
    assert out[4:5] == b"O" and struct.unpack("!III", out[5:]) == (6, 0x1FF, int(OFFERED_PROTOCOL))
    answer = Negotiate(6, actions, protocol or Proto(0), macros or {})
    assert session.receive(encode_response(answer)) == [answer]
    return session


def test_stage_waits_for_the_verdict_in_any_split() -> None:
    session = negotiated()
    out = session.stage(Stage.HELO, "client.test")
    assert out == packet(b"H", b"client.test\0")
    assert session.awaiting is Stage.HELO
    reply = encode_response(MilterVerdict(MilterVerdictKind.REJECT, "550 5.7.1 go away"))
    got = [a for byte in reply for a in session.receive(bytes([byte]))]
    assert got == [MilterVerdict(MilterVerdictKind.REJECT, "550 5.7.1 go away")]
    assert session.awaiting is None


def test_no_flags_skip_the_stage_and_nr_flags_skip_the_answer() -> None:
    session = negotiated(protocol=Proto.NOHELO | Proto.NR_MAIL | Proto.NOHDRS)
    assert session.stage(Stage.HELO, "x") == b""
    assert session.stage(Stage.HEADER, "Subject", "x") == b""
    assert session.stage(Stage.MAIL, "<a@b>") == packet(b"M", b"<a@b>\0")
    assert session.awaiting is None
    assert session.stage(Stage.RCPT, "<c@d>")
    assert session.awaiting is Stage.RCPT


def test_macros_go_before_their_stage_filtered_by_what_the_milter_asked() -> None:
    session = negotiated(macros={MacroStage.MAIL: ("{mail_addr}",)})
    out = session.stage(Stage.MAIL, "<a@b>", macros={"{mail_addr}": "a@b", "i": "Q"})
    assert out == encode_macros(MilterCommand.MAIL, [("{mail_addr}", "a@b")]) + packet(
        b"M", b"<a@b>\0"
    )
    session.receive(encode_response(MilterVerdict(MilterVerdictKind.CONTINUE)))
    out = session.stage(Stage.RCPT, "<c@d>", macros={"{rcpt_addr}": "c@d"})
    assert out.startswith(encode_macros(MilterCommand.RCPT, [("{rcpt_addr}", "c@d")]))


@pytest.mark.parametrize(
    "answer",
    [
        Negotiate(6, ALL_ACTIONS, Proto.RCPT_REJ),  # not offered
        Negotiate(6, MilterActions(0x200), Proto(0)),  # unknown action
        Negotiate(7, ALL_ACTIONS, Proto(0)),  # version from the future
        Negotiate(1, ALL_ACTIONS, Proto(0)),
        MilterVerdict(MilterVerdictKind.CONTINUE),  # not a negotiation
    ],
)
def test_bad_negotiation_is_a_protocol_error(answer: object) -> None:
    session = MilterSession()
    session.negotiate()
    with pytest.raises(MilterProtocolError):
        session.receive(encode_response(answer))  # type: ignore[arg-type]


def test_modifications_only_at_end_of_message_and_only_when_negotiated() -> None:
    session = negotiated(actions=MilterActions.ADDHDRS)
    session.stage(Stage.MAIL, "<a@b>")
    with pytest.raises(MilterProtocolError, match="before end of message"):
        session.receive(encode_response(AddHeader("X", "y")))
    session = negotiated(actions=MilterActions.ADDHDRS)
    session.stage(Stage.EOM)
    assert session.receive(encode_response(AddHeader("X", "y"))) == [AddHeader("X", "y")]
    with pytest.raises(MilterProtocolError, match="not negotiated"):
        session.receive(encode_response(ChangeSender("<x@y>")))


def test_skip_needs_negotiation_and_a_body_stage() -> None:
    session = negotiated()
    session.stage(Stage.BODY, data=b"x")
    with pytest.raises(MilterProtocolError):
        session.receive(encode_response(MilterVerdict(MilterVerdictKind.SKIP)))
    session = negotiated(protocol=Proto.SKIP)
    session.stage(Stage.BODY, data=b"x")
    session.receive(encode_response(MilterVerdict(MilterVerdictKind.SKIP)))
    assert not session.wants(Stage.BODY)


def test_unasked_answers_are_protocol_errors() -> None:
    session = negotiated()
    with pytest.raises(MilterProtocolError):
        session.receive(encode_response(MilterVerdict(MilterVerdictKind.CONTINUE)))
    session = negotiated()
    session.stage(Stage.HELO, "x")
    two = encode_response(MilterVerdict(MilterVerdictKind.CONTINUE)) * 2
    with pytest.raises(MilterProtocolError):
        session.receive(two)


def test_progress_keeps_waiting() -> None:
    session = negotiated()
    session.stage(Stage.EOM)
    assert session.receive(encode_response(Progress())) == [Progress()]
    assert session.awaiting is Stage.EOM
