"""The proxy's side of the interoperability tests: one filter script and one config."""

from __future__ import annotations

from pathlib import Path

from trio_proxsmtp.testing.certs import TestCertificates

# A message with "X-Interop: reject" in its header is refused (5xx), one with
# "X-Interop: tempfail" deferred (4xx); every other one passes unchanged.
FILTER = """\
#!/bin/sh
spool=$(mktemp) || exit 75
trap 'rm -f "$spool"' EXIT
cat > "$spool"
if grep -q '^X-Interop: reject' "$spool"; then
    echo "550 5.7.1 rejected by the interop filter" >&2
    exit 1
fi
if grep -q '^X-Interop: tempfail' "$spool"; then
    echo "451 4.7.1 deferred by the interop filter" >&2
    exit 1
fi
cat "$spool"
"""

HEADER = "X-Interop-Proxy: passed"


def proxy_config(directory: Path, certs: TestCertificates, *extra: str) -> str:
    """Header + the filter above, STARTTLS offered, PIPELINING and CHUNKING on; ``extra``
    lines (OutTLS, ListenTLS...) after."""
    script = directory / "interop-filter"
    script.write_text(FILTER)
    script.chmod(0o755)
    lines = [
        f"FilterCommand: {script}",
        f"Header: {HEADER}",
        f"TLSCertificate: {certs.certificate}",
        f"TLSKey: {certs.key}",
        "Pipelining: on",
        "Chunking: on",
        *extra,
    ]
    return "".join(f"{line}\n" for line in lines)


def message(subject: str, *headers: str, body: str = "Hello from the interop suite.\n") -> bytes:
    """A small CRLF message."""
    lines = ["From: a@exim.test", "To: b@next.test", f"Subject: {subject}", *headers, ""]
    text = "\r\n".join(lines) + "\r\n" + body.replace("\n", "\r\n")
    return text.encode()
