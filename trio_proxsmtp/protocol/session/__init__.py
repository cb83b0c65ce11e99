"""The proxy's SMTP session, sans-IO: the events the relay feeds in (`events`), the one
transition table and `Session.handle` (`machine`), the actions it gets back (`actions`),
and the small machines the session is made of (AUTH, XCLIENT, TLS to the next server,
BDAT, the milters' envelope replay, the limits), the command gates and the EHLO keywords
the proxy changes.

Nothing here imports anything of ours outside `trio_proxsmtp.protocol`; callers import
from the defining module (no re-exports here).
"""
