"""How a connection ends: the relay's own farewell replies and what each ending error
tells the log.

The errors that end a connection are members of the one root (protocol/errors.py) and carry
the farewell they imply in `reply`; `Ending` adds what the connection logs for them and the
reason a message cut short gets in its summary line.  `Connection.run` has one
`except ProxyError` that logs, sends `reply` (None: not a word) and closes.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from trio_proxsmtp.protocol.errors import ProxyError
from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = [
    "CLIENT_TIMEOUT",
    "INTERNAL_ERROR",
    "MESSAGE_TIMEOUT",
    "SHUTTING_DOWN",
    "Closing",
    "Ending",
    "MessageTimedOut",
    "upstream_unavailable",
]

# Our own replies (docs/behaviour.md).
CLIENT_TIMEOUT = Reply.single(421, "4.4.2 smtp.passthru Error: timeout exceeded")
SHUTTING_DOWN = Reply.single(421, "4.3.2 Service shutting down")
INTERNAL_ERROR = Reply.single(421, "4.3.0 Local Error")
# MessageTimeOut passed before the replay's final "." went out (docs/behaviour.md §8.1).
MESSAGE_TIMEOUT = Reply.single(451, "4.4.2 smtp.passthru Error: message timeout exceeded")


def upstream_unavailable(reason: str, status: str = "4.4.1") -> Reply:
    return Reply.single(421, f"{status} smtp.passthru Error: upstream {reason}")


class Ending:
    """Mixed into an error that ends the connection: its log line (`log_format` % the
    error, at `level`; None: no line) and `ended`, the summary's reason when a message was
    under way."""

    level: ClassVar[int | None] = logging.ERROR
    log_format: ClassVar[str] = "%s"
    ended: str = "connection closed"


class Closing(Ending, ProxyError):
    """The session ends normally (QUIT answered): nobody's fault, nothing more to say."""

    level = None


class MessageTimedOut(Ending, ProxyError):
    """MessageTimeOut passed between the client's final "." and the replay's: the stage
    under way (filter, milters, the next server's DATA or the replay) is cancelled, the
    client's final "." gets 451 4.4.2 and the connection closes, so nothing is delivered
    (docs/behaviour.md §8.1).  The slow stage may be ours or a peer's: neither branch."""

    level = logging.WARNING
    log_format = "MessageTimeOut exceeded: %s"
    ended = "message timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, MESSAGE_TIMEOUT)
