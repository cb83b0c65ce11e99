"""What a filter runs with: the environment of docs/behaviour.md §6.1, RECIPIENTS moved to
a file when exec could not hold it, and the check that exec will take the environment.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence

from trio_proxsmtp.stages.spool import RECIPIENTS_KIND, named_prefix

__all__ = [
    "RECIPIENTS_ENV_LIMIT",
    "filter_environment",
    "host_port",
    "message_id",
    "move_recipients_to_file",
    "tls_description",
    "unexecutable",
]

# One environment string may hold 128 KiB (MAX_ARG_STRLEN); past this RECIPIENTS is a file.
RECIPIENTS_ENV_LIMIT = 64 * 1024

_METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # metrics.MULTIPROC_ENV, without prometheus-client


def filter_environment(
    *,
    client: str,
    server: str,
    sender: str | None,
    recipients: Sequence[str],
    remote: str | None,
    remote_helo: str | None,
    temp_directory: str,
    base: Mapping[str, str] | None = None,
    helo: str | None = None,
    proto: str | None = None,
    client_port: int | None = None,
    tls: str | None = None,
    message_id: str | None = None,
    destination: str | None = None,
) -> dict[str, str]:
    """The daemon's environment plus the variables of docs/behaviour.md §6.1 (EMAIL is
    added by run_filter).

    Without the metrics directory of `Workers` (daemon/prometheus.py): a filter written with
    prometheus-client would otherwise add its own numbers to the proxy's.
    """
    env = dict(os.environ if base is None else base)
    env.pop(_METRICS_DIR_ENV, None)
    env["CLIENT"] = client
    env["SERVER"] = server
    env["TMPDIR"] = temp_directory
    if sender is not None:
        env["SENDER"] = sender
    if recipients:
        env["RECIPIENTS"] = "\n".join(recipients)
    if remote is not None:
        env["REMOTE"] = remote
    if remote_helo is not None:
        env["REMOTE_HELO"] = remote_helo
    # Issue 23: what else the proxy knows of the client and the message.
    if helo is not None:
        env["HELO"] = helo
    if proto is not None:
        env["PROTO"] = proto
    if client_port is not None:
        env["CLIENT_PORT"] = str(client_port)
    if tls is not None:
        env["TLS"] = tls
    if message_id is not None:
        env["ID"] = message_id
    if destination is not None:
        env["DESTINATION"] = destination
    return env


def tls_description(version: str | None, cipher: str | None) -> str:
    """TLS's value: the client side's protocol and cipher ("TLSv1.3 TLS_AES_256_GCM_SHA384"),
    "" in plain text."""
    return " ".join(part for part in (version, cipher) if part)


def host_port(address: tuple[str, int] | None) -> str | None:
    """DESTINATION's value: host:port, an IPv6 host in brackets; None when unknown."""
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def message_id(log: logging.LoggerAdapter[logging.Logger]) -> str:
    """ID's value: the id the connection's log lines, and so the message's summary line,
    start with (the adapter's own prefix, without its ": ")."""
    prefix, _ = log.process("", {})
    return str(prefix).removesuffix(": ")


def move_recipients_to_file(env: dict[str, str], directory: str) -> str | None:
    """RECIPIENTS too big for exec: write it to a 0600 file named by RECIPIENTS_FILE.

    One recipient per line, each ending in a newline. Returns the path (the caller removes
    it) or None when RECIPIENTS fits. Raises OSError.
    """
    recipients = env.get("RECIPIENTS")
    if recipients is None:
        return None
    data = recipients.encode("utf-8", "surrogateescape")
    if len(data) <= RECIPIENTS_ENV_LIMIT:
        return None
    fd, path = tempfile.mkstemp(prefix=named_prefix(RECIPIENTS_KIND), dir=directory)
    try:
        with open(fd, "wb", closefd=True) as f:
            f.write(data + b"\n")
    except BaseException:
        os.unlink(path)
        raise
    del env["RECIPIENTS"]
    env["RECIPIENTS_FILE"] = path
    return path


def unexecutable(env: Mapping[str, str]) -> str | None:
    """Why exec would refuse this environment (a NUL byte), or None."""
    for name, value in env.items():
        if "\0" in name or "\0" in value:
            return f"environment variable {name.replace(chr(0), '?')} contains a NUL byte"
    return None
