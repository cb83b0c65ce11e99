"""The native scanners over Trio (docs/behaviour.md §11.16): spamd's SPAMC and clamd's
zINSTREAM clients, and the runner that scans one spooled message with all of them at
once.

May import: `trio_proxsmtp.common`, `trio_proxsmtp.protocol` and the rest of
`trio_proxsmtp.stages`.
"""
