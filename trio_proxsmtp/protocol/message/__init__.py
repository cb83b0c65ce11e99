"""The message as the proxy changes and reports it, sans-IO: header insertion and edits,
and the per-message summary line (`summary`); no I/O and no clock, the relay measures and
the session collects the facts.
"""
