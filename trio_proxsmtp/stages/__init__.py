"""What happens to a spooled message outside SMTP: the spool files, the filter command (its
spec, the program check, the process and its group kill, the reaper, the verdict) and the
milter client.  One message at a time, per connection.

May import: `trio_proxsmtp.common` and `trio_proxsmtp.protocol` (never the relay, the config
parser or the daemon).  `settings.py` holds the types `config/` builds for this layer and
imports no Trio.
"""
