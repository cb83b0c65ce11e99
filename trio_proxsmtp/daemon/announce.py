"""The lines a serving process says once at start-up (docs/behaviour.md §9.7).

With one process they come from it; with `Workers: N` the supervisor says them once, and
each worker only says that it serves (`worker K of N serving ...`), so that a restarted
worker still shows in the log without repeating the start-up.
"""

from __future__ import annotations

import logging

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.common.log_format import structured
from trio_proxsmtp.config.model import Config

__all__ = ["filtering_note", "listening", "worker_serving"]

log = logging.getLogger(LOGGER_NAME)


def filtering_note(config: Config) -> None:
    """What checks each message: without FilterCommand nor Milters, nothing (1.10's
    warning); with Milters only, the milters (no warning: that is a configuration)."""
    if config.filter_command:
        return
    if config.milters:
        log.info("no filter command specified: messages go through the milters only")
    else:
        log.warning("no filter command specified. passing messages through")


def listening(names: list[str], workers: int = 1) -> None:
    """``listening on ADDRESSES`` (with the count of workers when there are several)."""
    text = ", ".join(names)
    fields = [("listen", text), ("workers", workers)]
    extra = structured("listening", fields)
    if workers > 1:
        log.info("listening on %s (%d workers)", text, workers, extra=extra)
    else:
        log.info("listening on %s", text, extra=extra)


def worker_serving(worker: int, workers: int, names: list[str]) -> None:
    """One worker of several (`worker`: its index from 0) is ready to serve `names`;
    counted from 1, as the supervisor's `worker K of N started` line counts it."""
    log.info("worker %d of %d serving %s", worker + 1, workers, ", ".join(names))
