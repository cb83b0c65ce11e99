"""The session's states, and the sets of them the transition table is written with."""

from __future__ import annotations

import enum

__all__ = ["COMMAND_STATES", "MESSAGE_STATES", "State"]


class State(enum.Enum):
    # Members are singletons compared by identity: hash them so too, in C (Enum's own
    # __hash__ is Python code, and these are dict keys on every input; bench/PROFILE.md).
    __hash__ = object.__hash__

    GREETING = "greeting"  # waiting for the upstream's banner
    HELO = "helo"  # banner relayed; no HELO/EHLO accepted yet
    MAIL = "mail"  # ready for a transaction
    RCPT = "rcpt"  # sender accepted; recipients may follow
    DATA = "data"  # the client is sending its message
    CHUNKS = "chunks"  # BDAT chunks came, the LAST not yet: commands between chunks
    FILTERING = "filtering"  # the message is spooled; the filter runs
    MILTERING = "miltering"  # the milters have the (filtered) message
    REPLAY = "replay"  # our DATA, the message and its final reply, upstream
    QUIT = "quit"  # QUIT answered; the connection closes


# States in which a client command line may arrive (and CHUNKS, between BDAT chunks).
COMMAND_STATES = frozenset({State.HELO, State.MAIL, State.RCPT})
# States in which a message is on its way.
MESSAGE_STATES = frozenset(
    {State.DATA, State.CHUNKS, State.FILTERING, State.MILTERING, State.REPLAY}
)
