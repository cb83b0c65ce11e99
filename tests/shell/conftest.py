"""Shared fixtures for the shell tests: keep the global logger and signals as we found them."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import pytest

from trio_proxsmtp.common.log import LOGGER_NAME


@pytest.fixture(autouse=True)
def _restore_logging_and_signals() -> Iterator[None]:
    logger = logging.getLogger(LOGGER_NAME)
    handlers, level = list(logger.handlers), logger.level
    sighup = signal.getsignal(signal.SIGHUP)
    yield
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)
    signal.signal(signal.SIGHUP, sighup)
