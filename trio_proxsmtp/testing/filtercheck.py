"""``python -m trio_proxsmtp.testing filter``: run a FilterCommand on one message, as the proxy.

People writing filters need to see what the proxy will make of theirs without sending
mail: this runs the command through the proxy's own code (``run_filter`` with the
environment of ``filter_environment`` and a ``Spool`` in TempDirectory), then prints the
verdict and a unified diff of the message the next server would get.

The message file is read as the proxy would receive it after DATA: bare LF line endings
become CRLF (an .eml saved on Unix has LF; SMTP carries CRLF), and a last line without an
ending gets one. The Header option (from the config, or ``--header``) is added to a
delivered message as the proxy adds it after the filter, ``%i`` being ``--client`` and
``%l`` ``--local``.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import enum
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import attrs

from trio_proxsmtp.config.checks import check_filter_program
from trio_proxsmtp.config.loader import load_config
from trio_proxsmtp.config.model import Config, ConfigError
from trio_proxsmtp.protocol.message.edit import bare_address
from trio_proxsmtp.protocol.message.header import HeaderInserter, expand_header
from trio_proxsmtp.protocol.smtp.replies import reply_from_text
from trio_proxsmtp.stages.filter.environment import filter_environment
from trio_proxsmtp.stages.filter.run import run_filter
from trio_proxsmtp.stages.filter.verdict import FilterVerdictKind
from trio_proxsmtp.stages.settings import FilterSpec, FilterType
from trio_proxsmtp.stages.smtp_filter import SmtpEnvelope, run_smtp_filter
from trio_proxsmtp.stages.spool import Spool

_BARE_LF = re.compile(rb"(?<!\r)\n")


class Outcome(enum.Enum):
    """The verdict as the command prints it; the value is the exit status."""

    DELIVER = 0
    REJECT = 1
    DROP = 3
    ERROR = 4


@attrs.frozen
class FilterResult:
    outcome: Outcome
    reply: str | None  # REJECT, DROP, ERROR: what the client would be told
    detail: str  # "exit 1", "killed by signal 9", "timed out after 30s", ...
    original: bytes
    delivered: bytes | None  # DELIVER: what the next server would get (Header included)
    warnings: tuple[str, ...] = ()  # about the Header template


def smtp_message(data: bytes) -> bytes:
    """The message as the proxy spools it: CRLF line endings, ending with CRLF."""
    data = _BARE_LF.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


async def check_filter(
    spec: FilterSpec,
    message: bytes,
    *,
    sender: str,
    recipients: Sequence[str],
    client: str = "127.0.0.1",
    server: str = "127.0.0.1",
    remote: str | None = None,
    remote_helo: str | None = None,
    header: str | None = None,
    local: str = "127.0.0.1",
    helo: str | None = None,
    proto: str | None = None,
    client_port: int | None = None,
    tls: str = "",
    message_id: str | None = None,
    destination: str | None = None,
) -> FilterResult:
    """Run ``spec`` over ``message`` (already CRLF, see smtp_message) as the proxy does,
    then add ``header`` (a Header template) to a message it delivers."""
    env = filter_environment(
        client=client,
        server=server,
        sender=sender,
        recipients=recipients,
        remote=remote,
        remote_helo=remote_helo,
        temp_directory=spec.temp_directory,
        helo=helo,
        proto=proto,
        client_port=client_port,
        tls=tls,
        message_id=message_id,
        destination=destination,
    )
    with Spool.create(spec.temp_directory, named=spec.mode is FilterType.FILE) as spool:
        spool.write(message)
        spool.finish()
        if spec.mode is FilterType.SMTP:  # the filter is an SMTP server (§11.17)
            envelope = SmtpEnvelope(
                bare_address(sender), [bare_address(r) for r in recipients], client, remote_helo
            )
            verdict = await run_smtp_filter(spec, spool, envelope)
        else:
            verdict = await run_filter(spec, spool, env)
        delivered: bytes | None = None
        if verdict.kind is FilterVerdictKind.ACCEPT:
            assert verdict.message is not None
            try:
                delivered = b"".join(verdict.message.chunks())
            finally:
                if verdict.message is not spool:
                    verdict.message.close()
    outcome = {
        FilterVerdictKind.ACCEPT: Outcome.DELIVER,
        FilterVerdictKind.REJECT: Outcome.REJECT,
        FilterVerdictKind.DROP: Outcome.DROP,
        FilterVerdictKind.ERROR: Outcome.ERROR,
    }[verdict.kind]
    reply = verdict.reply.text if verdict.reply is not None else None
    warnings: list[str] = []
    if delivered is not None and header:
        delivered, warnings = add_header(delivered, header, client=client, local=local)
    return FilterResult(outcome, reply, verdict.detail, message, delivered, tuple(warnings))


def add_header(
    message: bytes, template: str, *, client: str, local: str
) -> tuple[bytes, list[str]]:
    """The message with the Header option's header where the proxy puts it (docs/behaviour.md
    §7.2), and the template's warnings."""
    now = datetime.datetime.now().astimezone()
    line, warnings = expand_header(template, client=client, local=local, now=now)
    if not line:
        return message, warnings
    inserter = HeaderInserter(line)
    return inserter.feed(message) + inserter.finish(), warnings


def render(result: FilterResult) -> str:
    """The verdict line, then (deliver) a unified diff of the message, CRs not shown."""
    words = {
        Outcome.DELIVER: "deliver",
        Outcome.REJECT: "reject",
        Outcome.DROP: "drop (the client is told the message was accepted)",
        Outcome.ERROR: "error",
    }
    head = f"verdict: {words[result.outcome]} ({result.detail})\n"
    if result.reply is not None:
        head += f"reply: {result.reply}\n"
    if result.delivered is None:
        return head
    if result.delivered == result.original:
        return head + "message unchanged\n"
    diff = difflib.unified_diff(
        _lines(result.original), _lines(result.delivered), "message", "delivered"
    )
    text = "".join(line if line.endswith("\n") else line + "\n\\ No newline\n" for line in diff)
    return head + (text or "message changed in its line endings only\n")


def _lines(data: bytes) -> list[str]:
    return data.replace(b"\r\n", b"\n").decode("utf-8", "surrogateescape").splitlines(True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("message", help="the message file (.eml), as sent after DATA")
    parser.add_argument("-f", "--config", help="take FilterCommand and its options from here")
    parser.add_argument("--command", help="the FilterCommand (overrides the config's)")
    parser.add_argument(
        "--type", choices=[t.value for t in FilterType], help="FilterType (default pipe)"
    )
    parser.add_argument("--timeout", type=float, help="FilterTimeout in seconds (default 30)")
    parser.add_argument("--temp-dir", help="TempDirectory (default: a new private one)")
    parser.add_argument("--sender", default="", help="$SENDER (default: the null sender <>)")
    parser.add_argument(
        "--rcpt", action="append", default=[], help="a recipient ($RECIPIENTS); repeat it"
    )
    parser.add_argument("--client", default="127.0.0.1", help="$CLIENT (default 127.0.0.1)")
    parser.add_argument("--server", default="127.0.0.1", help="$SERVER (default 127.0.0.1)")
    parser.add_argument("--remote", help="$REMOTE (an XFORWARD ADDR)")
    parser.add_argument("--remote-helo", help="$REMOTE_HELO (an XFORWARD HELO)")
    parser.add_argument("--header", help="the Header option (overrides the config's)")
    parser.add_argument(
        "--local", default="127.0.0.1", help="the proxy's address the client reached (%%l)"
    )

    parser.add_argument("--helo", help="$HELO (the client's HELO/EHLO name)")
    parser.add_argument(
        "--proto", choices=["SMTP", "ESMTP"], help="$PROTO (with --helo: default ESMTP)"
    )
    parser.add_argument("--client-port", type=int, help="$CLIENT_PORT")
    parser.add_argument(
        "--tls", default="", help='$TLS, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384" (default empty)'
    )
    parser.add_argument("--id", help="$ID (the message id of the summary line)")
    parser.add_argument("--destination", help="$DESTINATION (TransparentProxy's host:port)")


class UsageError(Exception):
    """Bad arguments or config: one line, exit status 2."""


def _filter_config(args: argparse.Namespace) -> Config:
    config = Config()
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    changes: dict[str, Any] = {}
    if args.command is not None:
        changes["filter_command"] = args.command
    if args.type is not None:
        changes["filter_type"] = FilterType(args.type)
    if args.timeout is not None:
        changes["filter_timeout"] = args.timeout
    if args.temp_dir is not None:
        changes["temp_directory"] = args.temp_dir
    if args.header is not None:
        changes["header"] = args.header or None
    config = attrs.evolve(config, **changes)
    if config.filter_type is not FilterType.REJECT and not config.filter_command:
        raise UsageError("no FilterCommand: give --command or -f CONFIG")
    try:  # what -t and the daemon's start would refuse
        # Its only warning, a command with shell syntax whose program could not be checked,
        # is left out: the command is run right after, and its verdict says the rest.
        check_filter_program(config)
    except ConfigError as exc:
        raise UsageError(exc.message) from None
    return config


async def run(args: argparse.Namespace) -> tuple[int, str]:
    """(exit status, text to print) for the parsed arguments of the ``filter`` command."""
    config = _filter_config(args)
    try:
        with open(args.message, "rb") as f:
            message = smtp_message(f.read())
    except OSError as exc:
        raise UsageError(f"{args.message}: {exc.strerror}") from None
    if config.filter_type is FilterType.REJECT:
        reply = reply_from_text(config.filter_reject)
        result = FilterResult(Outcome.REJECT, reply.text, "FilterType: reject", message, None)
        return result.outcome.value, render(result)
    assert config.filter_command is not None

    command = config.filter_command

    async def check(temp_directory: str) -> FilterResult:
        spec = FilterSpec(command, config.filter_type, config.filter_timeout, temp_directory)
        return await check_filter(
            spec,
            message,
            sender=args.sender or "<>",
            recipients=args.rcpt,
            client=args.client,
            server=args.server,
            remote=args.remote,
            remote_helo=args.remote_helo,
            header=config.header,
            local=args.local,
            helo=args.helo,
            proto=args.proto or ("ESMTP" if args.helo is not None else None),
            client_port=args.client_port,
            tls=args.tls,
            message_id=args.id,
            destination=args.destination,
        )

    if args.temp_dir is None and args.config is None:
        with tempfile.TemporaryDirectory(prefix="proxsmtpd-filter.") as temp:
            result = await check(temp)
    else:
        result = await check(config.temp_directory)
    for warning in result.warnings:
        print(f"filter: warning: Header: {warning}", file=sys.stderr)
    return result.outcome.value, render(result)
