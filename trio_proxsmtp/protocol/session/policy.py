"""What the configuration decides for one connection (`SessionPolicy`): read by every
part of the session, changed only through its events (ClientNameKnown)."""

from __future__ import annotations

import attrs

from trio_proxsmtp.protocol.smtp.replies import Reply

__all__ = ["SessionPolicy"]


@attrs.frozen
class SessionPolicy:
    """What the configuration decides for one connection."""

    client: str  # the client's address as CLIENT shows it ("" for an unnamed unix peer)
    client_is_ipv6: bool = False
    # The address that connected, when a PROXY header named another client (the summary's
    # via=); None when `client` is the connecting address.
    peer: str | None = None
    filtering: bool = True  # a FilterCommand is set
    reject: Reply | None = None  # FilterType: reject -> the FilterReject reply
    skip_authenticated: bool = False
    xclient: bool = False
    xclient_name: str | None = None  # the client's host name for XCLIENT NAME=, if known
    max_message_size: int | None = None  # MaxMessageSize (None: only the upstream's SIZE)
    pipelining: bool = False  # advertise PIPELINING to the client
    starttls: bool = False  # a certificate is configured: offer STARTTLS to the client
    milters: bool = False  # Milters are configured: ask them at each stage
    filter_name: str = "filter"  # FilterCommand's program, for the summary's filter=
    upstream_starttls: bool = False  # OutTLS may/encrypt: STARTTLS to the next server
    upstream_tls_required: bool = False  # OutTLS encrypt: no plain-text fallback
    chunking: bool = False  # Chunking: on: advertise CHUNKING and take BDAT
    max_recipients: int = 0  # MaxRecipients: accepted recipients per transaction; 0: none
    hard_error_limit: int = 0  # HardErrorLimit: error replies before 421 and close; 0: none
    policy_service: bool = False  # PolicyService is set: ask it at each RCPT

    # Client identity (issue 23, docs/behaviour.md §11.12): what XCLIENT and XFORWARD say.
    client_port: int | None = None  # the client's port (XCLIENT/XFORWARD PORT=)
    destination: str | None = None  # the address the client connected to (DESTADDR=)
    destination_port: int | None = None  # ... and its port (DESTPORT=)
    xforward: bool = False  # XForward: on: the proxy sends XFORWARD, refuses the client's
    client_local: bool = False  # loopback or ConnectionLimitExceptions: XFORWARD SOURCE=LOCAL
    verified_tls_hop: bool = False  # OutTLS encrypt/implicit, OutTLSVerify on: REQUIRETLS
