"""trio_proxsmtp: an SMTP filtering proxy on Trio, a drop-in rewrite of proxsmtpd 1.10."""

__version__ = "0.1.0"
