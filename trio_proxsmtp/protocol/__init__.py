"""The sans-IO SMTP core: bytes in, events and bytes out; no I/O, no Trio.

Nothing here imports anything outside this package but the standard library and attrs.
"""

from trio_proxsmtp.protocol.bdat import (
    BdatCommand,
    BdatSender,
    BdatSyntaxError,
    BdatTransfer,
    ChunkReader,
    bdat_command,
    bdat_frames,
    parse_bdat,
)
from trio_proxsmtp.protocol.commands import Command, Verb, parse_command
from trio_proxsmtp.protocol.data import DataReceiver, DataSender, stuff, unstuff
from trio_proxsmtp.protocol.ehlo import (
    PROXY_HOSTNAME,
    STRIPPED_EXTENSIONS,
    Extensions,
    parse_extensions,
    rewrite_banner,
    rewrite_ehlo_reply,
    rewrite_helo_reply,
)
from trio_proxsmtp.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from trio_proxsmtp.protocol.lines import CLIENT_LINE_LIMIT, LineBuffer, LineTooLong
from trio_proxsmtp.protocol.replies import Reply, ReplyParser, reply_from_text

__all__ = [
    "CLIENT_LINE_LIMIT",
    "PROXY_HOSTNAME",
    "STRIPPED_EXTENSIONS",
    "BdatCommand",
    "BdatSender",
    "BdatSyntaxError",
    "BdatTransfer",
    "ChunkReader",
    "Command",
    "DataReceiver",
    "DataSender",
    "Extensions",
    "LineBuffer",
    "LineTooLong",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Reply",
    "ReplyParser",
    "Verb",
    "bdat_command",
    "bdat_frames",
    "parse_bdat",
    "parse_command",
    "parse_extensions",
    "reply_from_text",
    "rewrite_banner",
    "rewrite_ehlo_reply",
    "rewrite_helo_reply",
    "stuff",
    "unstuff",
]
