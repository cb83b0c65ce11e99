"""Sans-IO parts of the native scanners (docs/behaviour.md §11.16): the SPAMC request and
spamd's response, clamd's zINSTREAM framing and reply, and how the scanners' verdicts
combine.

May import: the standard library, attrs and the rest of `trio_proxsmtp.protocol`.
"""
