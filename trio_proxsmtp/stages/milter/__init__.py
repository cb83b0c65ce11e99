"""The milter client over Trio: `MilterClient` for one milter of one connection (client.py),
`Milters` for all the configured milters of a connection, stage by stage (milters.py), and
what they are told and decide (decisions.py).

May import: `trio_proxsmtp.common`, `trio_proxsmtp.protocol` and `trio_proxsmtp.stages`.
"""
