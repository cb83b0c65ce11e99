"""What every layer above the protocol shares: addresses and networks, TLS contexts,
logging, the nursery helper, the command trace, and the metrics interface the relay calls
(`metrics.Metrics`; the Prometheus side is the daemon's).

Lives per process, holds no connection state.  May import: the standard library, Trio and
`trio_proxsmtp.protocol`.
"""
