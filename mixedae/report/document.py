"""The report as data (sections of paragraphs, tables and figures) and its two renderings:
one self-contained HTML page (PNGs embedded as data URIs, each also linked as its file) and a
Markdown copy that references the PNG files beside it."""
from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

MISSING = "missing"


@dataclass
class Text:
    text: str
    kind: str = "p"            # p | missing | note


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    source_col: int | None = None  # rows whose cell here starts with "paper" are styled as such


@dataclass
class Figure:
    png: str                   # file name, relative to the report folder
    caption: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)
    status: str = "present"     # present | partial | missing

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    def add(self, *blocks) -> "Section":
        self.blocks.extend(blocks)
        return self


@dataclass
class Report:
    title: str
    header: list[str]           # lines under the title
    sections: list[Section]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1180px;padding:16px 24px;color:#1d2330;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #e3e6ee;padding-bottom:4px;
margin-top:1.8em}.hdr{color:#4a5568;font-size:.92em;margin:.1em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #d5d9e2;padding:3px 8px;text-align:right}
th{background:#f1f3f8}td:first-child,th:first-child{text-align:left}
table.cmp td:nth-child(2),table.cmp th:nth-child(2){text-align:left}caption{text-align:left}
tr.paper td{color:#5a6478;background:#fafbfd;font-style:italic}
.missing{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px}
.note{color:#5a6478;font-size:.88em}figure{margin:.8em 0}
figure img{max-width:100%;border:1px solid #e3e6ee}
figcaption{font-size:.85em;color:#4a5568}.st-present{color:#1a7f37}.st-partial{color:#b07000}
.st-missing{color:#b42318}nav a{margin-right:12px;font-size:.9em}
code{background:#f1f3f8;padding:0 3px;border-radius:3px;font-size:.92em}
"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans (the Markdown copy keeps the backticks)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _status_table(report: Report) -> str:
    rows = "".join(f'<tr><td><a href="#{s.anchor}">{html.escape(s.title)}</a></td>'
                   f'<td class="st-{s.status}">{s.status}</td></tr>' for s in report.sections)
    return f"<table><tr><th>part</th><th>status</th></tr>{rows}</table>"


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for row in t.rows:
        paper = t.source_col is not None and row[t.source_col].startswith("paper")
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in row)
        body.append(f'<tr{" class=paper" if paper else ""}>{cells}</tr>')
    cap = f"<caption class=note>{html.escape(t.caption)}</caption>" if t.caption else ""
    cls = " class=cmp" if t.source_col is not None else ""
    return f"<table{cls}>{cap}<tr>{head}</tr>{''.join(body)}</table>"


def _figure_html(f: Figure, out: Path) -> str:
    data = base64.b64encode((out / f.png).read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(f.png)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{html.escape(f.caption)} (<a href="{html.escape(f.png)}">'
            f'{html.escape(f.png)}</a>)</figcaption></figure>')


def render_html(report: Report, out: Path) -> str:
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
             f"<title>{html.escape(report.title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>"]
    parts += [f'<p class=hdr>{_inline(line)}</p>' for line in report.header]
    parts.append('<nav><a href="report.md">Markdown copy</a></nav>')
    parts.append(_status_table(report))
    for s in report.sections:
        parts.append(f'<h2 id="{s.anchor}">{html.escape(s.title)}</h2>')
        for b in s.blocks:
            if isinstance(b, Text):
                parts.append(f'<p class="{b.kind}">{_inline(b.text)}</p>')
            elif isinstance(b, Table):
                parts.append(_table_html(b))
            else:
                parts.append(_figure_html(b, out))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(c: str) -> str:
    return c.replace("|", "\\|")


def render_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""] + [f"{h}  " for h in report.header] + [""]
    lines += ["| part | status |", "|---|---|"]
    lines += [f"| [{s.title}](#{s.anchor}) | {s.status} |" for s in report.sections] + [""]
    for s in report.sections:
        lines += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Text):
                prefix = {"missing": "> **missing:** ", "note": "_note:_ "}.get(b.kind, "")
                lines += [prefix + b.text, ""]
            elif isinstance(b, Table):
                lines += ["| " + " | ".join(map(_md_cell, b.header)) + " |",
                          "|" + "---|" * len(b.header)]
                lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows]
                lines += (["", f"_{b.caption}_"] if b.caption else []) + [""]
            else:
                lines += [f"![{b.png}]({b.png})", "", f"_{b.caption}_", ""]
    return "\n".join(lines) + "\n"


def write(report: Report, out: Path) -> Path:
    """report.html + report.md into ``out`` (the PNGs must already be there)."""
    from mixedae.runtime.atomic import atomic_write_text
    for name, text in (("report.md", render_markdown(report)),
                       ("report.html", render_html(report, out))):
        atomic_write_text(out / name, text)
        os.chmod(out / name, 0o644)  # (the atomic writer's temp files are private)
    return out / "report.html"
