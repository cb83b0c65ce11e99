"""systemd's readiness protocol (sd_notify): READY, RELOADING, STOPPING and STATUS.

Under ``Type=notify`` (or ``Type=notify-reload``) systemd hands the service a datagram
socket in ``$NOTIFY_SOCKET`` and waits for ``READY=1`` before it starts the units ordered
after it, so "started" means "accepting mail".  A reload is framed by ``RELOADING=1`` and
``READY=1``, a drain starts with ``STOPPING=1``.

The variable is taken out of the environment at start-up (`take_socket`), so that neither
the filters nor the worker processes inherit it: only the main process speaks for the
service.  Without the variable every call here does nothing.  A failed send is logged
and otherwise ignored: the mail matters more than the status line.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

__all__ = [
    "NOT_RELOADED",
    "forget",
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "take_socket",
]

log = logging.getLogger("trio_proxsmtp")

NOT_RELOADED = "config not reloaded: see the log; running on the old one"

_address: str | None = None


def take_socket(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Remove ``NOTIFY_SOCKET`` from `environ` and remember it for this process."""
    global _address
    value = environ.pop("NOTIFY_SOCKET", None)
    _address = value or None
    return _address


def forget() -> None:
    """Stop notifying from this process (a worker: the supervisor speaks for the service)."""
    global _address
    _address = None


def notify(*fields: str) -> bool:
    """Send ``KEY=VALUE`` fields in one datagram; True if one was sent."""
    if _address is None:
        return False
    # "@name" is an abstract socket: its name starts with a NUL byte.
    target = "\0" + _address[1:] if _address.startswith("@") else _address
    payload = "\n".join(fields).encode("utf-8", "replace")
    try:
        # Non-blocking: a service manager that stopped reading must not stall the mail.
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.sendto(payload, target)
    except OSError as exc:
        log.warning("couldn't notify the service manager: %s: %s", _address, exc)
        return False
    return True


def ready(text: str) -> bool:
    """Accepting mail (again, after a reload); `text` is the status line."""
    return notify("READY=1", f"MAINPID={os.getpid()}", f"STATUS={text}")


def reloading() -> bool:
    """A reload starts (``Type=notify-reload`` wants the monotonic time with it)."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the config")


def stopping() -> bool:
    """The drain starts: no new connections, messages in flight finish."""
    return notify("STOPPING=1", "STATUS=shutting down: finishing messages in flight")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
