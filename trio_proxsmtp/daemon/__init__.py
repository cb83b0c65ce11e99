"""The process: the command line, listeners and the accept loop with its admission and
drain, the PROXY-header accept, workers, signals, privileges, service notification, and
the Prometheus HTTP side.  Lives as long as the process.

May import: every layer below it (config, relay, stages, common, protocol).
"""
