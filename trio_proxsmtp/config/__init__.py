"""The configuration: proxsmtpd.conf → one frozen `Config` → each layer's settings, built
here and nowhere else.  No Trio: `-t` loads only this.

May import: `trio_proxsmtp.common`, `trio_proxsmtp.protocol`, and the settings types of the
layers it builds for (`relay.settings`, `stages.settings`), never their I/O.
"""
