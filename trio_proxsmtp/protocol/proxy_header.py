"""HAProxy's PROXY protocol, versions 1 and 2, as a sans-IO parser (the encoder, for
OutProxyProtocol and the tests, is proxy_header_build.py: one module pair, one format).

A load balancer in front of the proxy opens each connection with one header saying who the
real client is; after it the stream is plain SMTP.  `ProxyHeaderParser.feed` takes bytes as
they arrive and returns `NEED_MORE` or a `ParsedProxyHeader` (the header and the bytes after
it, which belong to the SMTP layer); anything that is not a valid header raises
`ProxyHeaderError`, a `RemoteProtocolError` (the balancer broke the protocol).  Input is
bounded: a v1 line is at most 107 bytes and a v2 header at most 16 + `max_v2_length` bytes,
so garbage is refused after at most that many bytes, and as soon as the first bytes cannot
start a header.

Version 1 is the text line ``PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`` or
``PROXY UNKNOWN ...\\r\\n``.  Version 2 is the 12-byte signature, version/command,
family/transport, a 16-bit length, the addresses (IPv4, IPv6 or unix paths) and TLVs.  TLVs
of the types the protocol defines are kept (in order, within the length bound); unknown
ones are skipped; a truncated TLV is an error.  The CRC32C TLV is kept but not verified.

Which headers carry a client address: v1 TCP4/TCP6 and v2 PROXY with AF_INET/AF_INET6/
AF_UNIX.  v2 LOCAL (a load balancer's own health check), v2 AF_UNSPEC and v1 UNKNOWN carry
none: the receiver uses the connection's real endpoints.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import attrs

from trio_proxsmtp.protocol.errors import RemoteProtocolError

__all__ = [
    "FAMILIES",
    "MAX_V2_LENGTH",
    "NEED_MORE",
    "TRANSPORTS",
    "UNIX_PATH_LENGTH",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "NeedMore",
    "ParsedProxyHeader",
    "ProxyCommand",
    "ProxyFamily",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderParser",
    "ProxyTransport",
    "TLVType",
    "parse_proxy_header",
]

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the whole line, CRLF included (the protocol's own limit)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16  # signature, version/command, family/transport, length
# The v2 length field allows 65535 bytes; real balancers send well under 1 KiB (addresses,
# ALPN, SNI, a unique id, TLS details).  Anything longer is refused rather than buffered.
MAX_V2_LENGTH = 2048
UNIX_PATH_LENGTH = 108
_V2_ADDRESS_LENGTH = {1: 12, 2: 36, 3: 2 * UNIX_PATH_LENGTH}
_SSL_CLIENT_SSL = 0x01  # PP2_CLIENT_SSL in the SSL TLV's client field


class ProxyHeaderError(RemoteProtocolError):
    """The bytes are not a valid PROXY header (v1 or v2); `reason` says why.  The peer
    broke the protocol; the connection closes without a reply (`reply` None)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProxyCommand(enum.Enum):
    PROXY = "PROXY"  # relayed on behalf of a client
    LOCAL = "LOCAL"  # the balancer's own connection (health check): no client address


class ProxyFamily(enum.Enum):
    UNSPEC = "UNSPEC"  # v1 UNKNOWN, v2 AF_UNSPEC
    INET = "INET"
    INET6 = "INET6"
    UNIX = "UNIX"


class ProxyTransport(enum.Enum):
    UNSPEC = "UNSPEC"
    STREAM = "STREAM"
    DGRAM = "DGRAM"


class TLVType(enum.IntEnum):
    """The TLV types the protocol defines; others are skipped."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30


FAMILIES = {0: ProxyFamily.UNSPEC, 1: ProxyFamily.INET, 2: ProxyFamily.INET6, 3: ProxyFamily.UNIX}
TRANSPORTS = {0: ProxyTransport.UNSPEC, 1: ProxyTransport.STREAM, 2: ProxyTransport.DGRAM}
_KNOWN_TLVS = frozenset(int(t) for t in TLVType)


@attrs.frozen
class ProxyHeader:
    """One PROXY header.  Addresses are text ("192.0.2.1", "2001:db8::1" compressed, or a
    unix path); ports are None for unix addresses and when there is no address at all."""

    version: int  # 1 or 2
    command: ProxyCommand
    family: ProxyFamily
    transport: ProxyTransport = ProxyTransport.STREAM
    source_address: str | None = None
    source_port: int | None = None
    destination_address: str | None = None
    destination_port: int | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()  # (type, value) of the known types, in order

    @property
    def has_client(self) -> bool:
        """True when the header names the real client (else use the socket's endpoints)."""
        return self.command is ProxyCommand.PROXY and self.source_address is not None

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of this type, or None."""
        for t, value in self.tlvs:
            if t == kind:
                return value
        return None

    @property
    def client_tls(self) -> bool:
        """True when the balancer says the client spoke TLS to it (v2 SSL TLV)."""
        value = self.tlv(TLVType.SSL)
        return bool(value and value[0] & _SSL_CLIENT_SSL)


class NeedMore(enum.Enum):
    """Feed more bytes: the header is not complete yet."""

    NEED_MORE = "NEED_MORE"


NEED_MORE = NeedMore.NEED_MORE


@attrs.frozen
class ParsedProxyHeader:
    header: ProxyHeader
    remainder: bytes  # what followed the header: the start of the SMTP stream


class ProxyHeaderParser:
    """Feed bytes until it returns a ParsedProxyHeader; it raises ProxyHeaderError on
    anything else.  Once it has returned or raised, feeding it again is an error."""

    def __init__(self, *, max_v2_length: int = MAX_V2_LENGTH) -> None:
        self._buffer = bytearray()
        self._max_v2_length = max_v2_length
        self._done = False

    def feed(self, data: bytes | bytearray) -> NeedMore | ParsedProxyHeader:
        if self._done:
            raise RuntimeError("the PROXY header parser has already finished")
        self._buffer += data
        try:
            result = self._parse()
        except ProxyHeaderError:
            self._done = True
            raise
        if result is not NEED_MORE:
            self._done = True
        return result

    def _parse(self) -> NeedMore | ParsedProxyHeader:
        buffer = bytes(self._buffer)
        if _is_prefix(buffer, V2_SIGNATURE):
            if len(buffer) < V2_FIXED_LENGTH:
                return NEED_MORE
            return _parse_v2(buffer, self._max_v2_length)
        if _is_prefix(buffer, V1_PREFIX):
            return _parse_v1(buffer)
        raise ProxyHeaderError("the connection did not start with a PROXY header")


def parse_proxy_header(
    data: bytes, *, max_v2_length: int = MAX_V2_LENGTH
) -> NeedMore | ParsedProxyHeader:
    """One-shot parse of the bytes received so far (see ProxyHeaderParser)."""
    return ProxyHeaderParser(max_v2_length=max_v2_length).feed(data)


def _is_prefix(buffer: bytes, expected: bytes) -> bool:
    """True if buffer and expected agree on their common length."""
    n = min(len(buffer), len(expected))
    return buffer[:n] == expected[:n]


# --- version 1 ---------------------------------------------------------------------------


def _parse_v1(buffer: bytes) -> NeedMore | ParsedProxyHeader:
    end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if b"\n" in buffer[:V1_MAX_LENGTH]:
            raise ProxyHeaderError("PROXY v1 line not ended by CRLF")
        if len(buffer) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 line longer than {V1_MAX_LENGTH} bytes")
        return NEED_MORE
    line = buffer[:end]
    remainder = buffer[end + 2 :]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    if not text.isprintable():
        raise ProxyHeaderError("PROXY v1 line has control characters")
    fields = text.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        # Whatever follows UNKNOWN is to be ignored (the protocol says so).
        header = ProxyHeader(1, ProxyCommand.PROXY, ProxyFamily.UNSPEC, ProxyTransport.UNSPEC)
        return ParsedProxyHeader(header, remainder)
    if len(fields) != 6:
        raise ProxyHeaderError("PROXY v1 line must be: PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    _, protocol, source, destination, source_port, destination_port = fields
    ip_type: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
    if protocol == "TCP4":
        family, ip_type = ProxyFamily.INET, ipaddress.IPv4Address
    elif protocol == "TCP6":
        family, ip_type = ProxyFamily.INET6, ipaddress.IPv6Address
    else:
        raise ProxyHeaderError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN: {protocol!r}")
    header = ProxyHeader(
        1,
        ProxyCommand.PROXY,
        family,
        ProxyTransport.STREAM,
        _v1_address(source, ip_type),
        _v1_port(source_port),
        _v1_address(destination, ip_type),
        _v1_port(destination_port),
    )
    return ParsedProxyHeader(header, remainder)


def _v1_address(
    text: str, ip_type: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]
) -> str:
    try:
        if "%" in text:  # a scope id is no client address
            raise ValueError(text)
        return str(ip_type(text))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 address is not {ip_type.__name__}: {text!r}") from None


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 port is not 0..65535: {text!r}")
    if len(text) > 1 and text[0] == "0":
        raise ProxyHeaderError(f"PROXY v1 port has a leading zero: {text!r}")
    return int(text)


# --- version 2 ---------------------------------------------------------------------------


def _parse_v2(buffer: bytes, max_length: int) -> NeedMore | ParsedProxyHeader:
    version_command, family_transport, length = struct.unpack_from("!BBH", buffer, 12)
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 version is not 2: {version_command >> 4}")
    command_code = version_command & 0x0F
    if command_code == 0:
        command = ProxyCommand.LOCAL
    elif command_code == 1:
        command = ProxyCommand.PROXY
    else:
        raise ProxyHeaderError(f"PROXY v2 command is neither LOCAL nor PROXY: {command_code}")
    family_code, transport_code = family_transport >> 4, family_transport & 0x0F
    if family_code not in FAMILIES:
        raise ProxyHeaderError(f"PROXY v2 unknown address family: {family_code}")
    if transport_code not in TRANSPORTS:
        raise ProxyHeaderError(f"PROXY v2 unknown transport: {transport_code}")
    if length > max_length:
        raise ProxyHeaderError(f"PROXY v2 header length {length} is over the limit {max_length}")
    total = V2_FIXED_LENGTH + length
    if len(buffer) < total:
        return NEED_MORE
    body = buffer[V2_FIXED_LENGTH:total]
    remainder = buffer[total:]
    family, transport = FAMILIES[family_code], TRANSPORTS[transport_code]
    if command is ProxyCommand.LOCAL:
        # The balancer speaking for itself: the address block is to be ignored.
        return ParsedProxyHeader(ProxyHeader(2, command, family, transport), remainder)
    address_length = _V2_ADDRESS_LENGTH.get(family_code, 0)
    if len(body) < address_length:
        raise ProxyHeaderError(
            f"PROXY v2 {family.value} addresses need {address_length} bytes, got {len(body)}"
        )
    addresses = _v2_addresses(family, body[:address_length])
    header = ProxyHeader(2, command, family, transport, *addresses, _v2_tlvs(body[address_length:]))
    return ParsedProxyHeader(header, remainder)


def _v2_addresses(
    family: ProxyFamily, block: bytes
) -> tuple[str | None, int | None, str | None, int | None]:
    if family is ProxyFamily.INET or family is ProxyFamily.INET6:
        # Two packed addresses (4 or 16 bytes: ip_address tells them apart), two ports.
        size = 4 if family is ProxyFamily.INET else 16
        source_port, destination_port = struct.unpack_from("!HH", block, 2 * size)
        return (
            str(ipaddress.ip_address(block[:size])),
            source_port,
            str(ipaddress.ip_address(block[size : 2 * size])),
            destination_port,
        )
    if family is ProxyFamily.UNIX:
        return (
            _unix_path(block[:UNIX_PATH_LENGTH]),
            None,
            _unix_path(block[UNIX_PATH_LENGTH:]),
            None,
        )
    return None, None, None, None  # AF_UNSPEC: use the real endpoints


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _v2_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    kept: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyHeaderError("PROXY v2 truncated TLV")
        kind, length = struct.unpack_from("!BH", data, offset)
        offset += 3
        if len(data) - offset < length:
            raise ProxyHeaderError(f"PROXY v2 TLV of type 0x{kind:02x} overruns the header")
        if kind in _KNOWN_TLVS:
            kept.append((kind, data[offset : offset + length]))
        offset += length
    return tuple(kept)
