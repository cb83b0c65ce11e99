"""The SMTP wire, sans-IO: bounded lines, client commands, replies and the upstream reply
parser, EHLO keywords, DATA and BDAT framing, and the client reader that picks the framer
for the next bytes.

May import: the standard library, attrs and `trio_proxsmtp.protocol`.
"""
