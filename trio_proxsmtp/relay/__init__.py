"""One client connection on Trio: the connection loop, the client channel, the upstream,
the message transaction, who the client is, deadlines, the fast socket path and the peek
that sees the client leave.  Everything here lives as long as one connection.

May import: `trio_proxsmtp.stages`, `trio_proxsmtp.common` and `trio_proxsmtp.protocol`,
never the config parser or the daemon.  `settings.py` holds the types `config/` builds for
this layer.
"""
