"""Run cli.main with a stand-in server, so the start-up path can be tested end to end.

Usage: python fake_server_main.py [proxsmtpd args...]. The stand-in binds Listen (TCP IP
literal only) like the real server would, prints "SERVING <pid>" on stdout once serving, and
returns on SIGTERM/SIGINT.
"""

from __future__ import annotations

import signal
import socket
import sys
from typing import Any

import trio

from trio_proxsmtp.config.model import Config
from trio_proxsmtp.daemon import cli, listeners
from trio_proxsmtp.daemon import signals as signal_task


def bind_listeners(config: Config) -> list[socket.socket]:
    host = config.listen.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, config.listen.port))
        sock.listen(5)
    except OSError:
        sock.close()
        raise
    return [sock]


async def serve(
    config: Config,
    sockets: list[socket.socket],
    *,
    reload: Any = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # Like the real serve(): the command line blocked these until a receiver exists.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signal_task.HANDLED_SIGNALS)
        task_status.started([s.getsockname() for s in sockets])
        print(f"SERVING {__import__('os').getpid()}", flush=True)
        async for _ in signals:
            break
    for s in sockets:
        s.close()


setattr(listeners, "bind_listeners", bind_listeners)  # noqa: B010
setattr(signal_task, "serve", serve)  # noqa: B010
sys.exit(cli.main(sys.argv[1:]))
