"""Nursery helpers shared by the connection's parts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["single_error"]


@contextmanager
def single_error() -> Iterator[None]:
    """Let one error out of a nursery as itself, not wrapped in an ExceptionGroup, so the
    connection loop's `except ProxyError` sees it (protocol/errors.py)."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
