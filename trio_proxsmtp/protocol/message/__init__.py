"""A message as bytes, sans-IO: the inserted `Header:` line, the edits a milter asks for,
and the per-message summary line.

May import: the standard library, attrs and `trio_proxsmtp.protocol`.
"""
