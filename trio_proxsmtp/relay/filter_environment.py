"""The filter's environment for the current message (docs/behaviour.md §6.1): what the
connection knows (session, client channel, upstream) put into the variables of
stages/filter/environment.py."""

from __future__ import annotations

import logging

from trio_proxsmtp.protocol.session.state import SessionState
from trio_proxsmtp.relay.client_channel import ClientChannel
from trio_proxsmtp.stages.filter.environment import (
    filter_environment,
    host_port,
    message_id,
    tls_description,
)

__all__ = ["message_environment"]


def message_environment(
    session: SessionState,
    client: ClientChannel,
    server: str,
    temp_directory: str,
    log: logging.LoggerAdapter[logging.Logger],
) -> dict[str, str]:
    """The environment of FilterCommand's run for the session's current message."""
    envelope = session.envelope
    info = client.info
    return filter_environment(
        client=info.client,
        server=server,
        sender=envelope.sender,
        recipients=envelope.recipients,
        remote=envelope.remote_addr,
        remote_helo=envelope.remote_helo,
        temp_directory=temp_directory,
        helo=session.helo_name,
        proto=session.protocol_name,
        client_port=info.client_port,
        tls=tls_description(*client.tls_details()),
        message_id=message_id(log),
        destination=host_port(info.original_destination),
    )
