"""One listener's accept loop (server.py): it survives running out of resources (EMFILE,
ENFILE, ENOMEM, ENOBUFS: logged, 100 ms of wait, accept again); any other accept error ends
the server.  With several workers it first leaves waiting clients to a worker with room
(handoff.py)."""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import trio

from trio_proxsmtp.common.log import LOGGER_NAME

__all__ = ["accept_loop"]

log = logging.getLogger(LOGGER_NAME)

# Accept errors that mean "out of resources": wait and retry instead of dying.
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_RESOURCE_RETRY = 0.1  # seconds


async def accept_loop(
    listener: trio.SocketListener,
    dispatch: Callable[[trio.SocketStream], None],
    leave_to_others: Callable[[trio.SocketListener, bool], Awaitable[bool]] | None = None,
) -> None:
    """Accept clients on `listener` and `dispatch` each, until cancelled or an error."""
    overflowing = False
    while True:
        if leave_to_others is not None:
            overflowing = await leave_to_others(listener, overflowing)
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno in _RESOURCE_ERRNOS:
                log.error("accept failed: %s; retrying in 100 ms", exc)
                await trio.sleep(_RESOURCE_RETRY)
                continue
            if exc.errno == errno.EINVAL:
                # Another worker is shutting down and shut the shared listener down (no
                # longer listening): our own SIGTERM is on its way; until then the
                # sessions we have go on.
                log.debug("listener %s shut down by another worker", listener.socket)
                await trio.sleep_forever()
            raise
        dispatch(stream)
