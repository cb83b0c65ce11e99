"""The corpus (corpus.py) through the proxy: with a Header and a ``cat`` filter the next
server gets each message byte for byte plus the header line; through OpenDKIM signing
(a milter) the signature verifies with dkimpy and with a second OpenDKIM in verify mode."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
import trio
from corpus import FIELD, canonical, constructed, header_end, real_world, with_header

from trio_proxsmtp.testing import FakeUpstream, open_client, run_proxy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "milter"))
from milter_support import OpenDKIM, start_opendkim

pytestmark = pytest.mark.integration
HEADER = b"X-Corpus-Proxy: passed"
DOMAIN, SELECTOR = "example.test", "corpus"
# Left out by signable() (with the fragments that have no From at all): "From: foo" (no
# domain), mbox "From " lines on top (two), and a whitespace-only line that dkimpy takes
# for a fold (the proxy, docs/behaviour.md §7.2, and OpenDKIM end the header block there).
UNSIGNABLE = [f"cpython/msg_{n}.txt" for n in ("05", "25", "43")]
# A body without the blank line before it: signed by OpenDKIM, verified by it (dkimpy
# refuses to parse it).
NO_BLANK_LINE = ["cpython/msg_35.txt"]
UNSIGNABLE.append("whitespace-line-in-headers")


def corpus() -> dict[str, bytes]:
    messages = real_world()
    if not messages:
        pytest.skip("no real-world corpus: apt-get install libpython3.11-testsuite spamassassin")
    assert any(name.startswith("cpython/") for name in messages), "libpython3.11-testsuite"
    assert any(name.startswith("spamassassin/") for name in messages), "spamassassin"
    return messages | constructed()


async def relay_all(config: str, messages: dict[str, bytes]) -> dict[str, bytes]:
    """Send every message on one connection; what the next server got, by name."""
    got: dict[str, bytes] = {}
    async with (
        FakeUpstream(max_line=1 << 20) as up,
        run_proxy(config, upstream=up) as proxy,
        open_client(proxy.host, proxy.port) as client,
    ):
        for name, raw in messages.items():
            before = len(up.transactions)
            replies = await client.send_message("s@example.test", ["r@example.test"], raw)
            assert replies[-1].code == 250, (name, replies)
            assert len(up.transactions) == before + 1, name
            got[name] = up.transactions[-1].message
    return got


def loose(raw: bytes) -> bytes:
    """The file as a sloppy client sends it: its bare LFs (and CRs) as they are, only the
    last line end made CRLF, since the end of data is CRLF.CRLF and nothing else (a bare
    LF before the dot is not an end: docs/behaviour.md §5.1)."""
    if raw.endswith(b"\n") and not raw.endswith(b"\r\n"):
        return raw[:-1] + b"\r\n"
    return raw


def loose_result(raw: bytes) -> bytes:
    """What the next server gets for ``loose(raw)``: the canonical message, except that a
    line after a bare LF that starts with a dot keeps the client's stuffing dot: a bare LF
    is no line end to the proxy (no unstuffing after it), only made CRLF on the way on
    (docs/behaviour.md §11.15)."""
    return canonical(re.sub(rb"(?<!\r)\n\.", b"\n..", loose(raw)))


@pytest.mark.interop("corpus", "Header + cat filter: byte for byte")
@pytest.mark.parametrize("sent", ["canonical", "as-is"])
async def test_corpus_byte_for_byte(sent: str) -> None:
    messages = corpus()
    payloads = {
        n: canonical(raw) if sent == "canonical" else loose(raw) for n, raw in messages.items()
    }
    config = f"Header: {HEADER.decode()}\nFilterCommand: cat\n"
    with trio.fail_after(60):
        got = await relay_all(config, payloads)
    expect = canonical if sent == "canonical" else loose_result
    differ = [n for n, raw in messages.items() if got[n] != with_header(expect(raw), HEADER)]
    assert differ == [], f"{len(differ)} of {len(messages)} changed: {differ}"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenDKIM]:
    """OpenDKIM signing every message it sees from 127.0.0.1 with one key, whatever its
    From domain (a SigningTable wildcard)."""
    tmp_path = tmp_path_factory.mktemp("corpus-dkim")
    (tmp_path / "keytable").write_text(
        f"{SELECTOR}._domainkey.{DOMAIN} {DOMAIN}:{SELECTOR}:{tmp_path / 'keys' / SELECTOR}"
        ".private\n"
    )
    (tmp_path / "signingtable").write_text(f"* {SELECTOR}._domainkey.{DOMAIN}\n")
    settings = [
        "Mode s",
        "Socket inet:8891@127.0.0.1",
        f"KeyTable file:{tmp_path / 'keytable'}",
        f"SigningTable refile:{tmp_path / 'signingtable'}",
        "Canonicalization relaxed/simple",
    ]
    yield from start_opendkim(tmp_path, "\n".join(settings), DOMAIN, SELECTOR)


@pytest.fixture(scope="module")
def verifier(tmp_path_factory: pytest.TempPathFactory, signer: OpenDKIM) -> Iterator[OpenDKIM]:
    """OpenDKIM verifying only; the proxy's client (127.0.0.1) is made external to it.
    Its key file (TestPublicKeys, read at each lookup) is given the signer's public key."""
    tmp_path = tmp_path_factory.mktemp("corpus-dkim-v")
    settings = [
        "Mode v",
        "Socket inet:8891@127.0.0.1",
        f"Domain {DOMAIN}",
        f"Selector {SELECTOR}",
        "KeyFile keys/x.private",
        "InternalHosts 192.0.2.1",
    ]
    for running in start_opendkim(tmp_path, "\n".join(settings), DOMAIN, SELECTOR):
        (tmp_path / "keys.txt").write_bytes(
            f"{SELECTOR}._domainkey.{DOMAIN} ".encode() + signer.txt_record + b"\n"
        )
        yield running


def signable(messages: dict[str, bytes]) -> dict[str, bytes]:
    """The messages a DKIM signer can sign: a header block of fields, with one From field
    holding a domain (RFC 6376 §5.3, RFC 5322 §2.1). Left out: mbox "From " lines on top
    (no header at all), a From without a domain, a whitespace-only line in the header
    block. A body with no blank line before it is kept (the Header goes before its first
    line, outside the body the signer hashed: docs/behaviour.md §7.2)."""
    kept = {}
    for name, raw in messages.items():
        lines = canonical(raw).split(b"\r\n")[:-1]
        end = header_end(lines)
        if end < len(lines) and lines[end] and not lines[end].strip():
            continue  # whitespace-only: dkimpy takes it for a fold
        head = lines[:end]
        fields = [line for line in head if line[:1] not in (b" ", b"\t")]
        senders = [line for line in fields if line[:5].lower() == b"from:"]
        if all(FIELD.match(f) for f in fields) and len(senders) == 1 and b"@" in senders[0]:
            kept[name] = raw
    return kept


@pytest.mark.interop("corpus", "OpenDKIM signing, verified by dkimpy and OpenDKIM")
async def test_corpus_signed_by_opendkim_verifies(signer: OpenDKIM, verifier: OpenDKIM) -> None:
    everything = corpus()
    messages = signable(everything)
    left_out = sorted(set(everything) - set(messages))
    assert len(messages) >= 45 and set(UNSIGNABLE) <= set(left_out), left_out
    assert set(NO_BLANK_LINE) <= set(messages)
    config = f"Header: {HEADER.decode()}\nFilterCommand: cat\nMilters: {signer.address}\n"
    with trio.fail_after(120):
        signed = await relay_all(config, {n: canonical(raw) for n, raw in messages.items()})
        checked = await relay_all(f"Milters: {verifier.address}\n", signed)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode()
        return signer.txt_record

    problems = []
    for name, raw in messages.items():
        mail = signed[name]
        if not mail.startswith(b"DKIM-Signature: "):
            problems.append(f"{name}: not signed")
            continue
        rest = mail.split(b"\r\n", 1)[1]
        while rest[:1] in (b" ", b"\t"):  # the signature's folded lines
            _, rest = rest.split(b"\r\n", 1)
        if rest != with_header(canonical(raw), HEADER):
            problems.append(f"{name}: changed beyond the signature and the header")
        if name in NO_BLANK_LINE:
            # dkimpy refuses a header section that does not end with a blank line (RFC
            # 5322 requires one); OpenDKIM's verdict below is the check.
            with pytest.raises(dkim.MessageFormatError):
                dkim.verify(mail, dnsfunc=dnsfunc)
        elif not dkim.verify(mail, dnsfunc=dnsfunc):
            problems.append(f"{name}: dkimpy says the signature does not verify")
        results = checked[name].split(b"\r\n\r\n", 1)[0]
        if b"dkim=pass" not in results:
            problems.append(f"{name}: OpenDKIM: {results[:300]!r}")
    assert problems == [], "\n".join(problems)
