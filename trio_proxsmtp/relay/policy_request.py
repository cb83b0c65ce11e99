"""What PolicyService is told about a client's RCPT (docs/behaviour.md §11.9): the
session's facts (HELO, sender, SIZE=) and the connection's (the client's address, port and
verified name, the TLS of the client side) as protocol/policy.py's `PolicyRequest`."""

from __future__ import annotations

from trio_proxsmtp.protocol.policy import PolicyRequest
from trio_proxsmtp.protocol.session.limits import declared_size
from trio_proxsmtp.protocol.session.state import SessionState
from trio_proxsmtp.protocol.smtp.commands import Command
from trio_proxsmtp.relay.client_channel import ClientChannel
from trio_proxsmtp.stages.milter.macros import client_name_macro, tls_macros

__all__ = ["policy_request", "rcpt_address"]


def rcpt_address(command: Command) -> str:
    """The RCPT's address without brackets (its raw argument when it cannot be parsed)."""
    if command.address is not None:
        return command.address.strip("<>")
    argument = command.argument
    if argument[:3].upper() == "TO:":
        argument = argument[3:]
    return argument.strip().strip("<>")


def policy_request(
    session: SessionState, client: ClientChannel, command: Command, queue_id: str
) -> PolicyRequest:
    info = client.info
    tls = tls_macros(client.stream)
    envelope = session.envelope
    return PolicyRequest(
        recipient=rcpt_address(command),
        sender=(envelope.sender or "").strip("<>"),
        client_address=info.client,
        client_name=client_name_macro(session.policy.xclient_name, unix=not info.client),
        protocol_name=session.protocol_name or "SMTP",
        helo_name=session.helo_name or "",
        queue_id=queue_id,
        client_port=info.client_port,
        server_address=info.local,
        size=declared_size(envelope.sender_params) or 0,
        encryption_protocol=tls.get("{tls_version}", ""),
        encryption_cipher=tls.get("{cipher}", ""),
        encryption_keysize=int(tls.get("{cipher_bits}", "0")),
    )
