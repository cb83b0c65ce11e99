"""Turning an accepted client away (admission.py decided): the reply, then the close.

Best effort and bounded: a refused client may not be reading, so the reply gets a few
seconds and the connection is closed whatever happened.
"""

from __future__ import annotations

import contextlib

import trio

from trio_proxsmtp.common.log import connection_logger

__all__ = [
    "BUSY_REPLY",
    "REFUSAL_TIMEOUT",
    "client_limit_reply",
    "refuse",
    "refuse_busy",
    "refuse_client",
]

BUSY_REPLY = b"421 Server busy, too many connections\r\n"  # MaxConnections
REFUSAL_TIMEOUT = 5.0  # seconds for the reply


def client_limit_reply(client: str) -> bytes:
    """MaxConnectionsPerClient's reply (docs/behaviour.md, "Limits")."""
    return f"421 4.7.0 Error: too many connections from {client}\r\n".encode()


async def refuse(stream: trio.SocketStream, reply: bytes) -> None:
    """Send `reply` if the client takes it in time, then close."""
    with trio.move_on_after(REFUSAL_TIMEOUT):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(reply)
    await trio.aclose_forcefully(stream)


async def refuse_busy(stream: trio.SocketStream, conn_id: str, limit: int) -> None:
    """MaxConnections (`limit`: this worker's share) is reached."""
    connection_logger(conn_id).error(
        "too many connections open (max %d). sent busy response", limit
    )
    await refuse(stream, BUSY_REPLY)


async def refuse_client(stream: trio.SocketStream, conn_id: str, client: str, limit: int) -> None:
    """`client` holds MaxConnectionsPerClient (`limit`, as this worker applies it)."""
    connection_logger(conn_id).warning(
        "too many connections from %s (max %d): refused", client, limit
    )
    await refuse(stream, client_limit_reply(client))
