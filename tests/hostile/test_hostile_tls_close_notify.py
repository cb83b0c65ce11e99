"""Issue 21, case 14: a TLS close_notify in the middle of a message, then cleartext.

The framing of Exim's 2026 use-after-free: the client does STARTTLS, starts a message
(`BDAT 100 LAST` with 40 bytes of its chunk, or `DATA` with part of the body) inside TLS,
ends TLS with a close_notify, and goes on in cleartext on the same socket (the rest of the
chunk, its final dot, a whole new transaction).  The cleartext is never taken as message
data nor as commands: the TLS end of stream is the client's end, the connection closes,
nothing is delivered and nothing stays in TempDirectory (docs/behaviour.md §11.18).  A
guard: it held before the test was written (trio's SSLStream reports the close_notify as
the end of stream and reads nothing after it).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from pathlib import Path

import pytest
import trio

from trio_proxsmtp.common.log import LOGGER_NAME
from trio_proxsmtp.testing import FakeUpstream, run_proxy

SMUGGLED = (
    b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@x>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
)


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test certificate is self-signed
    return context


def has_reply(data: bytes) -> bool:
    return any(line[3:4] == b" " for line in data.split(b"\r\n") if len(line) >= 4)


class TLSOverSocket:
    """A TLS client over a blocking socket through memory BIOs, so that it can send a
    close_notify and then write cleartext on the same socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context().wrap_bio(self.incoming, self.outgoing)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def reply(self) -> bytes:
        data = b""
        while not has_reply(data):
            try:
                data += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._fill()
        return data

    def close_notify(self) -> None:
        """Our close_notify, without waiting for the server's."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self._flush()


def raw_reply(sock: socket.socket) -> bytes:
    data = b""
    while not has_reply(data):
        data += sock.recv(4096)
    return data


def attack(port: int, message_start: bytes) -> tuple[list[bytes], bytes]:
    """Run the attack; (the replies inside TLS, every byte the socket got after our
    close_notify up to the proxy's close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert raw_reply(sock).startswith(b"220")
        sock.sendall(b"EHLO client.example\r\n")
        raw_reply(sock)
        sock.sendall(b"STARTTLS\r\n")
        assert raw_reply(sock).startswith(b"220")
        tls = TLSOverSocket(sock)
        replies = []
        for command in (b"EHLO client.example\r\n", b"MAIL FROM:<s@x>\r\n", b"RCPT TO:<r@x>\r\n"):
            tls.send(command)
            replies.append(tls.reply())
        if message_start == b"DATA\r\n":
            tls.send(message_start)
            replies.append(tls.reply())
            tls.send(b"Subject: cut\r\n\r\n" + b"a" * 24)  # 40 bytes of body
        elif message_start:
            tls.send(message_start + b"b" * 40)  # 40 of the chunk's 100 bytes
        tls.close_notify()
        # The rest of the chunk (or the body's end) and a whole transaction, in cleartext.
        sock.sendall(b"c" * 58 + b"\r\n" + b".\r\n" + SMUGGLED + b"QUIT\r\n")
        after = b""
        try:
            while chunk := sock.recv(65536):
                after += chunk
        except ConnectionResetError:
            # The proxy closed with our cleartext unread (its close_notify may come first):
            # the kernel answers that with a reset. Nothing more can come.
            pass
        return replies, after


@pytest.mark.parametrize(
    "message_start",
    [b"BDAT 100 LAST\r\n", b"DATA\r\n", b""],
    ids=["bdat", "data", "between-commands"],
)
async def test_cleartext_after_close_notify_is_neither_data_nor_commands(
    tls_files: tuple[Path, Path],
    tmp_path: Path,
    message_start: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    cert, key = tls_files
    spool = tmp_path / "spool"
    spool.mkdir()
    config = (
        f"TLSCertificate: {cert}\nTLSKey: {key}\nChunking: on\nTempDirectory: {spool}\n"
        "FilterCommand: cat\n"
    )
    with trio.fail_after(20):
        async with FakeUpstream() as up, run_proxy(config, upstream=up) as proxy:
            replies, after = await trio.to_thread.run_sync(attack, proxy.port, message_start)
    assert [r[:3] for r in replies][1:3] == [b"250", b"250"]
    # Whatever came after our close_notify is TLS (an alert at most), never a cleartext
    # answer to the smuggled commands.
    for answer in (b"250 ", b"354 ", b"221 ", b"503 ", b"500 "):
        assert answer not in after
    assert up.transactions == []
    assert not any(c.upper().startswith((b"DATA", b"BDAT")) for c in up.commands)
    assert not any(b"evil" in c for c in up.commands)
    assert list(spool.iterdir()) == []
    if message_start:
        assert "client disconnected: unexpected end of data from client" in caplog.text
        assert "reason=client disconnected" in caplog.text
    else:
        assert "client disconnected: closed the connection" in caplog.text
