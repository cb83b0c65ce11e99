"""The milter protocol's numbers (Sendmail/Postfix mail filters, version 6): the command and
response codes, the negotiated action and protocol flags, the macro stages, the limits, and
the error raised when a milter breaks the protocol.

The MTA (us) sends commands (``SMFIC_*``, upper-case letters), the milter answers with
responses (``SMFIR_*``); codec.py frames them.
"""

from __future__ import annotations

import enum

from trio_proxsmtp.protocol.errors import RemoteProtocolError

__all__ = [
    "ALL_ACTIONS",
    "BODY_CHUNK_SIZE",
    "MAX_ANSWERS",
    "MAX_PACKET_SIZE",
    "OFFERED_PROTOCOL",
    "VERSION",
    "MacroStage",
    "MilterActions",
    "MilterCommand",
    "MilterProtocolError",
    "Proto",
    "Response",
]

VERSION = 6
BODY_CHUNK_SIZE = 65535  # what libmilter calls MILTER_CHUNK_SIZE
# Refused above this: a 1 MiB body chunk (SMFIP_MDS_1M) plus room for its header fields.
MAX_PACKET_SIZE = 1024 * 1024 + 1024
# Packets a milter may send before its verdict on one stage (PROGRESS and end-of-message
# modifications together), docs/behaviour.md §6.5. A real milter sends a few: OpenDKIM one
# header, rspamd a handful, PROGRESS every few seconds of work; a body replaced in
# libmilter's 65535-byte pieces takes one per piece, so this allows a new body of some
# 600 MiB. A milter past it is broken or hostile, and each packet costs us a decode.
MAX_ANSWERS = 10_000


class MilterProtocolError(RemoteProtocolError):
    """The peer broke the milter protocol (bad packet, unexpected or unnegotiated answer)."""


class MilterCommand(bytes, enum.Enum):
    """SMFIC_*: what the MTA sends."""

    ABORT = b"A"
    BODY = b"B"
    CONNECT = b"C"
    MACRO = b"D"
    EOM = b"E"
    HELO = b"H"
    QUIT_NC = b"K"
    HEADER = b"L"
    MAIL = b"M"
    EOH = b"N"
    OPTNEG = b"O"
    QUIT = b"Q"
    RCPT = b"R"
    DATA = b"T"
    UNKNOWN = b"U"


class Response(bytes, enum.Enum):
    """SMFIR_*: what the milter answers."""

    ADDRCPT = b"+"
    DELRCPT = b"-"
    ADDRCPT_PAR = b"2"
    SHUTDOWN = b"4"
    ACCEPT = b"a"
    REPLBODY = b"b"
    CONTINUE = b"c"
    DISCARD = b"d"
    CHGFROM = b"e"
    CONN_FAIL = b"f"
    ADDHEADER = b"h"
    INSHEADER = b"i"
    SETSYMLIST = b"l"
    CHGHEADER = b"m"
    PROGRESS = b"p"
    QUARANTINE = b"q"
    REJECT = b"r"
    SKIP = b"s"
    TEMPFAIL = b"t"
    REPLYCODE = b"y"
    OPTNEG = b"O"


class MilterActions(enum.IntFlag):
    """SMFIF_*: the modifications a milter may make (negotiated)."""

    ADDHDRS = 0x01
    CHGBODY = 0x02
    ADDRCPT = 0x04
    DELRCPT = 0x08
    CHGHDRS = 0x10
    QUARANTINE = 0x20
    CHGFROM = 0x40
    ADDRCPT_PAR = 0x80
    SETSYMLIST = 0x100


ALL_ACTIONS = MilterActions(0x1FF)


class Proto(enum.IntFlag):
    """SMFIP_*: stages a milter does not want (NO*), does not answer (NR_*), and extras."""

    NOCONNECT = 0x1
    NOHELO = 0x2
    NOMAIL = 0x4
    NORCPT = 0x8
    NOBODY = 0x10
    NOHDRS = 0x20
    NOEOH = 0x40
    NR_HDR = 0x80
    NOUNKNOWN = 0x100
    NODATA = 0x200
    SKIP = 0x400
    RCPT_REJ = 0x800
    NR_CONN = 0x1000
    NR_HELO = 0x2000
    NR_MAIL = 0x4000
    NR_RCPT = 0x8000
    NR_DATA = 0x10000
    NR_UNKN = 0x20000
    NR_EOH = 0x40000
    NR_BODY = 0x80000
    HDR_LEADSPC = 0x100000
    MDS_256K = 0x10000000
    MDS_1M = 0x20000000


# Everything but RCPT_REJ (we never send rejected recipients), HDR_LEADSPC (header values
# go without the space after the colon, as Postfix does) and the large-chunk sizes.
OFFERED_PROTOCOL = Proto(0x000FF7FF) & ~Proto.RCPT_REJ


class MacroStage(enum.IntEnum):
    """SMFIM_*: the stage numbers of the macro lists a milter may ask for."""

    CONNECT = 0
    HELO = 1
    MAIL = 2
    RCPT = 3
    DATA = 4
    EOM = 5
    EOH = 6
