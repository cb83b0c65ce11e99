"""The line that ends every connection, Postfix-like (docs/behaviour.md §9.6):

    disconnect from 192.0.2.1 ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5 duration=0.35

Pure: the relay counts the client's commands and measures the time; this module only says
how they read.  ``via=`` follows the client when a PROXY header named another client than
the address that connected.  Each command verb is counted under its lower-case name (in the
order first seen; a line that is no command is ``unknown``), ``commands=`` is their sum and
``duration=`` the seconds from the accept to the close.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from trio_proxsmtp.protocol.message.summary import Field, render

__all__ = ["Disconnect"]


@attrs.frozen
class Disconnect:
    client: str  # "" for an unnamed unix peer
    counts: Mapping[str, int]  # command verb (lower case) -> how many the client sent
    duration: float  # seconds
    via: str | None = None

    def fields(self) -> list[tuple[str, Field]]:
        """The line's fields after ``disconnect from``: the client, via=, the counts."""
        parts: list[tuple[str, Field]] = [("client", self.client or "(unix)")]
        if self.via is not None and self.via != self.client:
            parts.append(("via", self.via))
        parts.extend(self.counts.items())
        parts.append(("commands", sum(self.counts.values())))
        parts.append(("duration", round(max(self.duration, 0.0), 2)))
        return parts

    def line(self) -> str:
        (_, client), *fields = self.fields()
        rest = " ".join(f"{key}={render(value)}" for key, value in fields)
        return f"disconnect from {client} {rest}"

    def __str__(self) -> str:
        return self.line()
