"""``python -m trio_proxsmtp.testing filter``: run a FilterCommand on one message, as the proxy.

People writing filters need to see what the proxy will make of theirs without sending
mail: this runs the command through the proxy's own code (``run_filter`` with the
environment of ``filter_environment`` and a ``Spool`` in TempDirectory), then prints the
verdict and a unified diff of the message the next server would get.

The message file is read as the proxy would receive it after DATA: bare LF line endings
become CRLF (an .eml saved on Unix has LF; SMTP carries CRLF), and a last line without an
ending gets one. The Header option is not applied (it is added after the filter).
"""

from __future__ import annotations

import argparse
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
    delivered: bytes | None  # DELIVER: what the next server would get (before Header)


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
) -> FilterResult:
    """Run ``spec`` over ``message`` (already CRLF, see smtp_message) as the proxy does."""
    env = filter_environment(
        client=client,
        server=server,
        sender=sender,
        recipients=recipients,
        remote=remote,
        remote_helo=remote_helo,
        temp_directory=spec.temp_directory,
    )
    with Spool.create(spec.temp_directory, named=spec.mode is FilterType.FILE) as spool:
        spool.write(message)
        spool.finish()
        if spec.mode is FilterType.SMTP:  # the filter is an SMTP server (§11.9)
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
    return FilterResult(outcome, reply, verdict.detail, message, delivered)


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
    config = attrs.evolve(config, **changes)
    if config.filter_type is not FilterType.REJECT and not config.filter_command:
        raise UsageError("no FilterCommand: give --command or -f CONFIG")
    try:  # what -t and the daemon's start would say about it
        for warning in check_filter_program(config):
            print(f"filter: warning: {warning}", file=sys.stderr)
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
        )

    if args.temp_dir is None and args.config is None:
        with tempfile.TemporaryDirectory(prefix="proxsmtpd-filter.") as temp:
            result = await check(temp)
    else:
        result = await check(config.temp_directory)
    return result.outcome.value, render(result)
