"""The protocol trace (debug level): wire lines made readable, credentials hidden."""

from __future__ import annotations

from trio_proxsmtp.protocol.smtp.commands import Command, Verb

__all__ = ["show", "show_command"]


def show(line: bytes) -> str:
    return line.rstrip(b"\r\n").decode("utf-8", "replace")[:200]


def show_command(line: bytes, command: Command | None, in_auth: bool) -> str:
    """A client line for the protocol trace, with AUTH credentials hidden."""
    if in_auth:
        return "(AUTH continuation hidden)"
    if command is not None and command.verb is Verb.AUTH:
        mechanism = command.argument.split(None, 1)[:1]
        hidden = " (credentials hidden)" if len(command.argument.split()) > 1 else ""
        return " ".join(["AUTH", *mechanism]) + hidden
    return show(line)
