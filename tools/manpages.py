"""Make the manual pages man/trio-proxsmtpd.8 and man/trio-proxsmtpd.conf.5 from README.md.

The pages are the README's sections, converted from its small Markdown subset to roff, so
the two cannot say different things: tests/packaging checks that the committed pages are
what this script makes. After editing those README sections, run

    python tools/manpages.py          # rewrite man/*
    python tools/manpages.py --check  # exit 1 if man/* is stale

Markdown understood: ``##``/``###`` headings, paragraphs, 4-space code blocks, ``-`` lists,
``| a | b |`` tables, and inline code, bold and links.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAN = ROOT / "man"
DATE = "2026"  # not today's date: the output must depend on the README alone

PAGES = {
    "trio-proxsmtpd.8": {
        "title": ("TRIO-PROXSMTPD", "8", "System Manager's Manual"),
        "name": "trio-proxsmtpd, proxsmtpd \\- SMTP filtering proxy (trio_proxsmtp)",
        "synopsis": [
            "\\fBtrio\\-proxsmtpd\\fR [\\fB\\-d\\fR \\fILEVEL\\fR] [\\fB\\-f\\fR \\fIFILE\\fR] "
            "[\\fB\\-p\\fR \\fIPIDFILE\\fR] [\\fB\\-t\\fR]",
            "\\fBtrio\\-proxsmtpd\\fR \\fB\\-v\\fR | \\fB\\-h\\fR",
            "\\fBpython \\-m trio_proxsmtp\\fR ...",
        ],
        "description": True,
        "sections": [
            "Command line",
            "Postfix",
            "Running it as a service",
            "Using milters",
            "Running several instances",
            "Metrics",
            "Testing your own filter",
        ],
        "see_also": "\\fBtrio\\-proxsmtpd.conf\\fR(5), \\fBpostconf\\fR(5), \\fBmaster\\fR(5)",
    },
    "trio-proxsmtpd.conf.5": {
        "title": ("TRIO-PROXSMTPD.CONF", "5", "File Formats Manual"),
        "name": "trio\\-proxsmtpd.conf \\- configuration file of trio\\-proxsmtpd",
        "synopsis": ["\\fI/etc/trio\\-proxsmtpd.conf\\fR"],
        "description": False,
        "sections": ["Configuration", "Filters"],
        "see_also": "\\fBtrio\\-proxsmtpd\\fR(8)",
    },
}


def readme_sections(text: str) -> tuple[str, dict[str, str]]:
    """(the introduction after the first "---", {"## heading": body})."""
    intro = text.split("\n---\n", 1)[1].split("\n## ", 1)[0]
    sections = {}
    for chunk in text.split("\n## ")[1:]:
        heading, _, body = chunk.partition("\n")
        sections[heading.strip()] = body
    return intro, sections


def escape(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"[^\x00-\x7f]", lambda m: f"\\[u{ord(m[0]):04X}]", text)


def inline(text: str) -> str:
    """Escape for roff and turn `code`, **bold** and [links](url) into fonts."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append("\\fB" + escape(part[1:-1]) + "\\fR")
            continue
        part = re.sub(r"\[([^\]]+)\]\(#[^)]*\)", r"\1", part)  # in-page link: its text
        part = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"\1 <\2>", part)
        part = escape(part)
        part = re.sub(r"\*\*([^*]+)\*\*", r"\\fB\1\\fR", part)
        out.append(part)
    text = "".join(out)
    # a line of the result starting with "." or "'" would be a roff request
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n")
    )


def code_line(line: str) -> str:
    line = escape(line)
    return "\\&" + line if line.startswith((".", "'")) else line


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split(" | ")]


def convert(markdown: str) -> list[str]:
    """Roff lines for one README section body."""
    lines = markdown.strip("\n").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("### "):
            out.append(".SS " + inline(line[4:].strip()))
            i += 1
        elif line.startswith("    "):
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += [".PP", ".RS 4", ".nf", *map(code_line, block), ".fi", ".RE"]
        elif line.startswith("```"):
            i += 1
            block = []
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            out += [".PP", ".RS 4", ".nf", *map(code_line, block), ".fi", ".RE"]
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            header, body = rows[0], rows[2:]  # rows[1] is the |---| line
            for row in body:
                out += [".TP", inline(row[0])]
                rest = row[1:]
                if len(rest) >= 2:
                    named = zip(header[1:-1], rest[:-1], strict=False)
                    prefix = "; ".join(f"{name.capitalize()}: {cell}" for name, cell in named)
                    out.append(inline(f"{prefix}. {rest[-1]}"))
                elif rest:
                    out.append(inline(rest[0]))
        elif line.startswith("- "):
            while i < len(lines) and lines[i].startswith("- "):
                item = [lines[i][2:]]
                i += 1
                while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():
                    item.append(lines[i].strip())
                    i += 1
                out += [".IP \\(bu 2", inline(" ".join(item))]
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not _block_start(lines[i]):
                para.append(lines[i].strip())
                i += 1
            # converted as one text, so that `code` broken across two lines stays code
            out += [".PP", *inline("\n".join(para)).split("\n")]
    return out


def _block_start(line: str) -> bool:
    return line.startswith(("### ", "    ", "```", "|", "- "))


def render(page: str, readme: str) -> str:
    spec = PAGES[page]
    intro, sections = readme_sections(readme)
    title, number, manual = spec["title"]  # type: ignore[misc]
    out = [
        '.\\" Made by tools/manpages.py from README.md: edit the README, then run the script.',
        f'.TH {title} {number} "{DATE}" "trio_proxsmtp" "{manual}"',
        ".SH NAME",
        str(spec["name"]),
        ".SH SYNOPSIS",
    ]
    for n, line in enumerate(spec["synopsis"]):  # type: ignore[arg-type]
        out += [".br"] if n else []
        out.append(line)
    if spec["description"]:
        out += [".SH DESCRIPTION", *convert(intro)]
    for heading in spec["sections"]:  # type: ignore[attr-defined]
        out += [".SH " + escape(heading.upper()), *convert(sections[heading])]
    out += [".SH SEE ALSO", str(spec["see_also"])]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    readme = README.read_text()
    stale = []
    for page in PAGES:
        text = render(page, readme)
        path = MAN / page
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(page)
        else:
            MAN.mkdir(exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}: run python tools/manpages.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
