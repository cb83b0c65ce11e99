"""The errors that end a connection: members of the one root, each with its farewell."""

from __future__ import annotations

import logging

import pytest

from trio_proxsmtp.protocol.errors import LocalError, ProxyError, RemoteError
from trio_proxsmtp.relay.client_channel import ClientGone, ClientTimeout, Drained
from trio_proxsmtp.relay.client_info import NoOriginalDestination
from trio_proxsmtp.relay.endings import Closing, Ending
from trio_proxsmtp.relay.upstream import UpstreamFailure


@pytest.mark.parametrize(
    ("error", "base", "farewell"),
    [
        (ClientGone("closed the connection"), RemoteError, None),
        (
            ClientTimeout("client idle"),
            RemoteError,
            b"421 4.4.2 smtp.passthru Error: timeout exceeded\r\n",
        ),
        (
            UpstreamFailure("SERVER: couldn't connect to: x: refused", "unavailable"),
            RemoteError,
            b"421 4.4.1 smtp.passthru Error: upstream unavailable\r\n",
        ),
        (
            UpstreamFailure("SERVER: sent data after its reply", "TLS failure", "4.7.0"),
            RemoteError,
            b"421 4.7.0 smtp.passthru Error: upstream TLS failure\r\n",
        ),
        (
            NoOriginalDestination("no socket"),
            LocalError,
            b"421 4.4.1 smtp.passthru Error: upstream unavailable\r\n",
        ),
        (Drained(), ProxyError, b"421 4.3.2 Service shutting down\r\n"),
        (Closing(), ProxyError, None),
    ],
)
def test_each_ending_carries_its_farewell(
    error: ProxyError, base: type[ProxyError], farewell: bytes | None
) -> None:
    assert isinstance(error, base) and isinstance(error, Ending)
    assert (error.reply.to_bytes() if error.reply is not None else None) == farewell


def test_endings_name_their_log_line_and_summary_reason() -> None:
    failure = UpstreamFailure("network operation timed out: writing to server", "timed out")
    assert (failure.level, failure.log_format % failure) == (
        logging.ERROR,
        "network operation timed out: writing to server",
    )
    assert failure.ended == "upstream timed out"
    gone = ClientGone("connection reset")
    assert (gone.level, gone.log_format % gone, gone.ended) == (
        logging.INFO,
        "client disconnected: connection reset",
        "client disconnected",
    )
    timeout = ClientTimeout("CommandTimeOut exceeded")
    assert timeout.log_format % timeout == "network operation timed out: CommandTimeOut exceeded"
    assert timeout.ended == "client timed out"
    drained = Drained()
    assert drained.log_format % drained == "shutting down: closing an idle session"
    assert Closing.level is None
