"""TLS session resumption towards the next server (OutTLS, docs/behaviour.md §11.1.1).

The last resumable `ssl.SSLSession` of each next server (its certificate name and the
address reached), kept per client `ssl.SSLContext`: a session belongs to the context that
made it (Python refuses to set one from another context), so the cache hangs on the
context itself, in a weak map.  The configuration's context lives as long as the
configuration: a reload (new context) starts with no session, and what the old one kept
goes with it.  Per process: a worker forks before it connects anywhere, so nothing is
shared between workers.  Nothing here touches the network.
"""

from __future__ import annotations

import ssl
import time
import weakref

__all__ = ["TLSSessions", "sessions_for"]

# What one worker keeps at most (TransparentProxy may reach many next servers).
LIMIT = 256

Key = tuple[str | None, str]  # (the name checked in the certificate, the address reached)


class TLSSessions:
    """The last resumable session per next server, for one client context."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._sessions: dict[Key, ssl.SSLSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, name: str | None, reached: str) -> ssl.SSLSession | None:
        """The session to offer to `reached` when its certificate must show `name`.

        The name is part of the key: a resumed handshake checks no certificate, so a
        session verified for one name must never open a connection checked for another.
        Nor is one offered past its lifetime (the server's ticket lifetime hint, else
        OpenSSL's default), which bounds how long a resumed handshake may go on trusting
        the certificate it verified."""
        key = (name, reached)
        session = self._sessions.get(key)
        if session is not None and time.time() >= session.time + session.timeout:
            del self._sessions[key]
            return None
        return session

    def keep(
        self, name: str | None, reached: str, session: ssl.SSLSession | None, version: str | None
    ) -> None:
        """Remember `session` (of a connection under TLS `version`) for the next connection
        to `reached` if it can be resumed: under TLS 1.3 once the server's ticket has come
        (after the first reply read over TLS), under TLS 1.2 as soon as the handshake is
        done."""
        if session is None:
            return
        if version == "TLSv1.3":
            if not session.has_ticket:
                return
        elif not (session.has_ticket or session.id):
            return
        key = (name, reached)
        self._sessions.pop(key, None)
        self._sessions[key] = session
        if len(self._sessions) > self._limit:
            del self._sessions[next(iter(self._sessions))]  # the least recently kept

    def forget(self, name: str | None, reached: str) -> None:
        """Drop the session of `reached` (its handshake failed)."""
        self._sessions.pop((name, reached), None)


_CACHES: weakref.WeakKeyDictionary[ssl.SSLContext, TLSSessions] = weakref.WeakKeyDictionary()


def sessions_for(context: ssl.SSLContext) -> TLSSessions:
    """The sessions of `context` (made on first use, gone with the context)."""
    sessions = _CACHES.get(context)
    if sessions is None:
        sessions = _CACHES[context] = TLSSessions()
    return sessions
