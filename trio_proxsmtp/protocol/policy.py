"""Postfix's policy delegation protocol (SMTPD_POLICY_README), sans-IO: the request, the
answer, and what the answer means for one recipient (docs/behaviour.md §11.9).

A request is ``name=value`` lines ending with an empty line; so is the answer, whose one
attribute that counts is ``action=``, an access(5) action. `encode_request` makes the
bytes, `AnswerReader` reads an answer (bounded), `judge` turns its action into a
`PolicyVerdict`: relay the recipient (DUNNO, OK, and whatever the proxy cannot do, with a
note to log), refuse it with a reply, or relay it and prepend a header to the message.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

import attrs

from trio_proxsmtp.protocol.errors import RemoteProtocolError
from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = [
    "MAX_ANSWER",
    "AnswerReader",
    "PolicyProtocolError",
    "PolicyRequest",
    "PolicyVerdict",
    "PolicyVerdictKind",
    "encode_request",
    "judge",
]

# An answer is one short action line (postgrey's is some 120 bytes); a server that sends
# more than this is broken, and its bytes are not kept.
MAX_ANSWER = 8192
_MAX_LINE = 512 - len("554 \r\n")  # a refusal's text: the reply line within 512 bytes
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
_DSN = re.compile(r"([245])\.\d{1,3}\.\d{1,3}")
_HEADER = re.compile(r"[!-9;-~]+:[^\x00-\x08\x0a-\x1f\x7f]*")  # one line, TAB allowed


class PolicyProtocolError(RemoteProtocolError):
    """The policy server's answer cannot be read (too long, not name=value, no action)."""


def encode_request(attributes: Iterable[tuple[str, str]]) -> bytes:
    """One request: each ``name=value`` on its line, then the empty line. A control
    character in a value (CR, LF, NUL...: a value comes from the client) becomes "?", as
    Postfix prints them, so no value can end the request or add an attribute."""
    lines = []
    for name, value in attributes:
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad policy attribute name {name!r}")
        lines.append(f"{name}={_CONTROLS.sub('?', value)}\n")
    lines.append("\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


@attrs.frozen
class PolicyRequest:
    """The attributes Postfix sends at RCPT that the proxy knows (docs/behaviour.md §11.9).
    What it cannot know (sasl_*: AUTH passes through unread; ccert_*: no client
    certificate is asked for; etrn_domain, stress, policy_context) is sent empty, as
    Postfix sends what it does not have."""

    recipient: str
    sender: str
    client_address: str
    client_name: str  # the verified reverse name, else "unknown"
    protocol_name: str = "SMTP"
    helo_name: str = ""
    queue_id: str = ""
    client_port: int | None = None
    server_address: str = ""
    size: int = 0
    encryption_protocol: str = ""
    encryption_cipher: str = ""
    encryption_keysize: int = 0

    def attributes(self) -> list[tuple[str, str]]:
        port = "" if self.client_port is None else str(self.client_port)
        return [
            ("request", "smtpd_access_policy"),
            ("protocol_state", "RCPT"),
            ("protocol_name", self.protocol_name),
            ("helo_name", self.helo_name),
            ("queue_id", self.queue_id),
            ("sender", self.sender),
            ("recipient", self.recipient),
            ("recipient_count", "0"),  # Postfix too: non-zero only after RCPT
            ("client_address", self.client_address),
            ("client_name", self.client_name),
            ("reverse_client_name", self.client_name),
            ("instance", self.queue_id),
            ("sasl_method", ""),
            ("sasl_username", ""),
            ("sasl_sender", ""),
            ("size", str(self.size)),
            ("ccert_subject", ""),
            ("ccert_issuer", ""),
            ("ccert_fingerprint", ""),
            ("encryption_protocol", self.encryption_protocol),
            ("encryption_cipher", self.encryption_cipher),
            ("encryption_keysize", str(self.encryption_keysize)),
            ("etrn_domain", ""),
            ("stress", ""),
            ("client_port", port),
            ("server_address", self.server_address),
        ]


class AnswerReader:
    """Reads one answer after another from the server's bytes (bounded by MAX_ANSWER)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> dict[str, str] | None:
        """The answer these bytes complete, or None (more is needed). Bytes after the
        answer's empty line are a protocol error: nothing was asked for them."""
        self._buffer += data
        end = self._buffer.find(b"\n\n")
        if end < 0:
            if len(self._buffer) > MAX_ANSWER:
                raise PolicyProtocolError(f"answer longer than {MAX_ANSWER} bytes")
            return None
        if end + 2 > MAX_ANSWER:
            raise PolicyProtocolError(f"answer longer than {MAX_ANSWER} bytes")
        if len(self._buffer) > end + 2:
            raise PolicyProtocolError("data after the answer")
        raw = bytes(self._buffer[:end])
        self._buffer.clear()
        answer: dict[str, str] = {}
        for line in raw.decode("utf-8", "surrogateescape").split("\n"):
            name, equals, value = line.rstrip("\r").partition("=")
            if not equals or not _NAME.fullmatch(name):
                raise PolicyProtocolError(f"not name=value: {line[:80]!r}")
            answer[name] = value
        if "action" not in answer:
            raise PolicyProtocolError("answer without action=")
        return answer


class PolicyVerdictKind(enum.Enum):
    RELAY = "relay"  # the RCPT goes on to the next server
    REFUSE = "refuse"  # `reply` answers the RCPT; the next server never sees it
    PREPEND = "prepend"  # relay, and `header` goes on top of the message


@attrs.frozen
class PolicyVerdict:
    kind: PolicyVerdictKind
    reply: Reply | None = None
    header: str | None = None
    note: str | None = None  # what to log: an action the proxy cannot do, a WARN


RELAY = PolicyVerdict(PolicyVerdictKind.RELAY)
# Access(5) actions that make sense only inside Postfix (its queue, its restriction
# lists, its routing): logged and treated as DUNNO (docs/behaviour.md §11.9).
_NOT_HERE = {
    "HOLD": "the proxy has no queue to hold mail in",
    "DISCARD": "only the whole message could be discarded, for every recipient",
    "FILTER": "the proxy does not route mail; the next server does",
    "REDIRECT": "the proxy does not rewrite recipients",
    "BCC": "the proxy does not add recipients",
    "DEFER_IF_REJECT": "the proxy has no later restriction that could reject",
    "DELAY": "the proxy has no queue to delay mail in",
    "SHUNT": "the proxy does not route mail",
}
_REFUSALS = {"REJECT": (554, "5.7.1"), "DEFER": (450, "4.7.1"), "DEFER_IF_PERMIT": (450, "4.7.1")}


def judge(action: str, recipient: str) -> PolicyVerdict:
    """What an ``action=`` value means for the RCPT of `recipient` (its address without
    brackets). Refusals read as Postfix's: ``450 4.7.1 <r@x>: Recipient address rejected:
    TEXT``, with the action's own enhanced status code when it starts with one."""
    action = action.strip()
    word, text = [*action.split(None, 1), "", ""][:2]
    text = text.strip()
    upper = word.upper()
    if upper in ("DUNNO", "OK"):
        return RELAY
    if upper in _REFUSALS:
        code, dsn = _REFUSALS[upper]
        return PolicyVerdict(PolicyVerdictKind.REFUSE, _refusal(code, dsn, text, recipient))
    if len(word) == 3 and word.isdigit() and word[0] in "45":
        code = int(word)
        dsn = "4.7.1" if code < 500 else "5.7.1"
        return PolicyVerdict(PolicyVerdictKind.REFUSE, _refusal(code, dsn, text, recipient))
    if upper == "PREPEND":
        if not _HEADER.fullmatch(text) or len(text) > 998:
            return PolicyVerdict(
                PolicyVerdictKind.RELAY, note=f"PREPEND without a valid header ignored: {text!r}"
            )
        return PolicyVerdict(PolicyVerdictKind.PREPEND, header=text)
    if upper == "WARN":
        return PolicyVerdict(PolicyVerdictKind.RELAY, note=f"WARN {_CONTROLS.sub('?', text)}")
    why = _NOT_HERE.get(upper, "unknown action")
    return PolicyVerdict(
        PolicyVerdictKind.RELAY, note=f"{_CONTROLS.sub('?', action)[:200]}: DUNNO ({why})"
    )


def _refusal(code: int, dsn: str, text: str, recipient: str) -> Reply:
    """Postfix's wording; a text starting with an enhanced status code of the reply's class
    keeps it (postgrey: ``DEFER_IF_PERMIT Greylisted, see ...``)."""
    match = _DSN.match(text)
    if (
        match
        and match.group(1) == str(code)[0]
        and text[match.end() : match.end() + 1] in ("", " ")
    ):
        dsn, text = match.group(0), text[match.end() :].strip()
    text = _CONTROLS.sub("?", text) or ("Access denied" if code >= 500 else "Try again later")
    line = f"{dsn} <{_CONTROLS.sub('?', recipient)}>: Recipient address rejected: {text}"
    # The wire line ("NNN " + line + CRLF) within 512 bytes, no character cut in two.
    raw = line.encode("utf-8", "surrogateescape")[:_MAX_LINE]
    return Reply.single(code, raw.decode("utf-8", "ignore"))
