"""The stages' settings types (filter command, milters), built by `config/`, which may
import this module and never the stages' I/O.  No Trio here: `-t` loads only the config."""

from __future__ import annotations

import enum
import re

import attrs

__all__ = [
    "DefaultAction",
    "FilterSpec",
    "FilterType",
    "MilterAddress",
    "MilterSettings",
    "PolicyDefaultAction",
    "PolicySettings",
    "ScannerAddress",
    "ScannerDefaultAction",
    "ScannerKind",
    "ScannerSettings",
    "direct_argv",
]


class FilterType(enum.Enum):
    PIPE = "pipe"
    FILE = "file"
    REJECT = "reject"
    SMTP = "smtp"  # FilterCommand is an SMTP server's address (docs/behaviour.md §11.17)


@attrs.frozen
class FilterSpec:
    command: str
    mode: FilterType
    timeout: float
    temp_directory: str


class DefaultAction(enum.Enum):
    """MilterDefaultAction: what a milter that fails (unreachable, timeout, bad protocol) means."""

    TEMPFAIL = "tempfail"
    ACCEPT = "accept"
    REJECT = "reject"


@attrs.frozen
class MilterAddress:
    """``inet:host:port`` (host may be ``[v6]``) or ``unix:/path``."""

    text: str
    host: str | None = None
    port: int = 0
    path: str | None = None


@attrs.frozen
class MilterSettings:
    milters: tuple[MilterAddress, ...] = ()
    default_action: DefaultAction = DefaultAction.TEMPFAIL
    connect_timeout: float = 30.0
    command_timeout: float = 30.0
    content_timeout: float = 300.0


class PolicyDefaultAction(enum.Enum):
    """PolicyDefaultAction: what a policy service that fails (unreachable, timeout, an
    answer that cannot be read) means for the RCPT."""

    TEMPFAIL = "tempfail"
    DUNNO = "dunno"


@attrs.frozen
class PolicySettings:
    """PolicyService (docs/behaviour.md §11.9): where, what a failure means, and the
    deadline of each wait on it (connect, request, answer)."""

    address: MilterAddress  # inet:host:port or unix:/path, as a milter's
    default_action: PolicyDefaultAction = PolicyDefaultAction.TEMPFAIL
    timeout: float = 100.0


class ScannerKind(enum.Enum):
    SPAMD = "spamd"
    CLAMD = "clamd"


class ScannerDefaultAction(enum.Enum):
    """ScannerDefaultAction: what a scanner that fails (down, slow, garbage) means."""

    TEMPFAIL = "tempfail"
    ACCEPT = "accept"


@attrs.frozen
class ScannerAddress:
    """One ``Scanners:`` entry, ``KIND:inet:HOST:PORT`` or ``KIND:unix:/path``."""

    kind: ScannerKind
    address: MilterAddress

    @property
    def text(self) -> str:
        return f"{self.kind.value}:{self.address.text}"


@attrs.frozen
class ScannerSettings:
    """The native scanners (docs/behaviour.md §11.16) and their options."""

    scanners: tuple[ScannerAddress, ...] = ()
    spamd_reject_score: float | None = None  # SpamdRejectScore; None: tag only
    spamd_user: str | None = None  # SpamdUser
    spamd_max_size: int = 512000  # SpamdMaxSize, as spamc
    default_action: ScannerDefaultAction = ScannerDefaultAction.TEMPFAIL
    connect_timeout: float = 10.0  # ScannerConnectTimeout
    timeout: float = 60.0  # ScannerTimeout: every other wait (below MessageTimeOut)


_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
# Words sh treats specially even without shell syntax: a program of the same name (if any)
# could behave differently, so these always go through sh.
_SH_BUILTIN_NAMES = """. : alias bg break cd command continue echo eval exec exit export false fc
fg getopts hash jobs kill local printf pwd read readonly return set shift test times trap true
type ulimit umask unalias unset wait"""
_SH_BUILTINS = frozenset(_SH_BUILTIN_NAMES.split())


def direct_argv(command: str) -> list[str] | None:
    """The argv to exec without a shell, or None when the command needs ``/bin/sh -c``."""
    words = command.split(" ")
    words = [w for w in words if w]
    if not words or not all(_PLAIN_WORD.fullmatch(w) for w in words):
        return None
    if "=" in words[0]:  # an assignment
        return None
    # A builtin: a program of the same name may differ ("true --help" prints help), except
    # a bare true/false, which the benchmarks' FilterType: file setups use.
    if words[0] in _SH_BUILTINS and not (words[0] in ("true", "false") and len(words) == 1):
        return None
    return words
