"""A minimal milter that accepts everything, for the benchmark: python bench/accept_milter.py PORT

It still sees every message (headers, body, end of message) like a content milter, but
negotiates "no reply" for every stage but the end of message (SMFIP_NR_*), so the MTA sends
a whole message without waiting and there is one round trip per message.  asyncio and the
standard library only, so that its own cost stays small next to the proxy's.
"""

from __future__ import annotations

import asyncio
import struct
import sys

NR_ALL = 0x1000 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000 | 0x40000 | 0x80000 | 0x80
NO_UNKNOWN = 0x100
CONTINUE = struct.pack("!I", 1) + b"c"
_LEN = struct.Struct("!I")


class AcceptMilter(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        start = 0
        out = []
        while len(buffer) - start >= 4:
            (size,) = _LEN.unpack_from(buffer, start)
            if len(buffer) - start - 4 < size:
                break
            code = buffer[start + 4 : start + 5]
            if code == b"O":  # option negotiation: only what the MTA offered
                _version, _actions, offered = struct.unpack_from("!III", buffer, start + 5)
                payload = struct.pack("!III", 6, 0, (NR_ALL | NO_UNKNOWN) & offered)
                out.append(_LEN.pack(len(payload) + 1) + b"O" + payload)
            elif code == b"E":  # end of message: the one answer
                out.append(CONTINUE)
            elif code == b"Q":
                self.transport.close()
                return
            start += 4 + size
        del buffer[:start]
        if out:
            self.transport.write(b"".join(out))


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(AcceptMilter, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
