"""The proxy's SMTP session, sans-IO: the events the relay feeds in (`events`), the one
transition table (`table`) and `Session.handle` (`machine`) over the session's data
(`state`), the actions it gets back (`actions`), and the small machines the session is
made of (their state in `parts`, their moves in `auth`, `xclient`, `upstream_tls`,
`chunking`, `replay`, `limits`), the command gates and the EHLO keywords the proxy
changes.

May import: the standard library, attrs and `trio_proxsmtp.protocol`; callers import from
the defining module (no re-exports here).
"""
