"""Socket addresses as proxsmtpd's config writes them (spec §5.1), plus IPv6.

CONTRACT (owned by the shell helper; the relay and server rely on these names):

    @attrs.frozen
    class Address:
        kind: AddressKind            # AddressKind.TCP or AddressKind.UNIX
        host: str | None             # TCP: IP literal or host name; None for "port only"
        port: int                    # TCP: 1..65535; 0 for UNIX
        path: str | None             # UNIX: socket path
        text: str                    # the value as written in the config

        @property
        def is_port_only(self) -> bool   # TCP with host None (0.0.0.0:port also counts)

    def parse_address(text: str, default_port: int) -> Address   # raises ValueError(reason)
    async def resolve(address: Address) -> list[tuple[family, sockaddr]]  (trio.socket.getaddrinfo)
    def format_host(sockaddr_or_path) -> str   # "127.0.0.1", "::1", unix path, "" for unnamed
"""
