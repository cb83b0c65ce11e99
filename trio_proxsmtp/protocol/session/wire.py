"""The session's own replies: fixed wire strings (docs/behaviour.md §10); clients and log
parsers depend on them, so they change only with the docs."""

from __future__ import annotations

from trio_proxsmtp.protocol.smtp.replies import Reply

START_MAIL_INPUT = Reply.single(354, "Start mail input; end with <CRLF>.<CRLF>")
NOT_IMPLEMENTED = Reply.single(502, "Command not implemented")
INSUFFICIENT_AUTHORIZATION = Reply.single(554, "Insufficient authorization")
LINE_TOO_LONG = Reply.single(500, "5.5.2 Line too long")
NEED_MAIL = Reply.single(503, "5.5.1 Error: need MAIL command")
NO_VALID_RECIPIENTS = Reply.single(554, "5.5.1 Error: no valid recipients")
MESSAGE_TOO_BIG = Reply.single(552, "5.3.4 Message size exceeds fixed limit")
READY_TO_START_TLS = Reply.single(220, "2.0.0 Ready to start TLS")
TLS_ALREADY_ACTIVE = Reply.single(503, "5.5.1 Error: TLS already active")
TLS_NO_PARAMETERS = Reply.single(501, "5.5.4 Syntax: STARTTLS")
TLS_IN_TRANSACTION = Reply.single(503, "5.5.1 Error: MAIL transaction in progress")
# A milter's DISCARD: the client is told the message was taken, as Postfix does.
MILTER_DISCARDED = Reply.single(250, "2.0.0 Ok")
# OutTLS (docs/behaviour.md §11): no mail goes to the next server in plain text under encrypt.
UPSTREAM_TLS_UNAVAILABLE = Reply.single(
    421, "4.7.0 smtp.passthru Error: TLS to the next server unavailable"
)
# XClient: on, and the next server refused the XCLIENT it advertised (docs/behaviour.md §4.5).
XCLIENT_REFUSED = Reply.single(421, "4.7.0 smtp.passthru Error: the next server refused XCLIENT")
NEED_HELO = Reply.single(503, "5.5.1 Error: send HELO/EHLO first")
AUTH_NEEDS_ENCRYPTION = Reply.single(
    538, "5.7.11 Encryption required for requested authentication mechanism"
)
# CHUNKING (RFC 3030) from the client, Chunking: on.
BDAT_IN_PROGRESS = Reply.single(503, "5.5.1 Error: BDAT transfer in progress (RSET to abandon)")
NOOP_OK = Reply.single(250, "2.0.0 Ok")
# Limits on hostile clients (docs/behaviour.md, "Limits"); never forwarded.
TOO_MANY_RECIPIENTS = Reply.single(452, "4.5.3 Too many recipients")
TOO_MANY_ERRORS = Reply.single(421, "4.7.0 Error: too many errors")
