"""HTML building blocks of the report: escaped text, tables, sections, inlined PNGs. No external URL anywhere."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["CSS", "cell", "details", "document", "image", "note", "section", "table"]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1160px;
color:#1a202c;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #e2e8f0;padding-bottom:4px;margin-top:1.8em}
h3{font-size:1.05em;margin-bottom:.3em}
table{border-collapse:collapse;margin:8px 0 12px;font-size:.88em}
th,td{border:1px solid #e2e8f0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f7fafc}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#4a5568;font-size:.9em}.warn{background:#fffaf0;border-left:4px solid #dd6b20;padding:6px 10px}
.error{color:#c53030;font-weight:600}.warning{color:#c05621}.info{color:#2b6cb0}
img{max-width:100%;border:1px solid #edf2f7}
nav a{margin-right:12px}code{background:#f7fafc;padding:0 3px}
details{margin:4px 0}summary{cursor:pointer}
"""


def cell(value: Any, digits: int = 2) -> str:
    """A table cell: numbers right-aligned and rounded, everything escaped."""
    if isinstance(value, bool) or value is None:
        return f"<td>{'' if value is None else html.escape(str(value))}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    if isinstance(value, float):
        text = f"{value:.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.4g}"
        return f'<td class="num">{text}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 2, cls: str = "") -> str:
    """A table; `cls` names the table for readers (and tests)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    head = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""
    body = "".join("<tr>" + "".join(cell(v, digits) for v in row) + "</tr>\n" for row in rows)
    attr = f' class="{html.escape(cls)}"' if cls else ""
    return f"<table{attr}>{head}<tbody>\n{body}</tbody></table>\n"


def image(png: bytes | None, alt: str) -> str:
    """The PNG inlined as a data URI (empty when there is none)."""
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>\n'


def note(text: str, warn: bool = False) -> str:
    return f'<p class="{"warn" if warn else "note"}">{html.escape(text)}</p>\n'


def details(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>\n{body}</details>\n"


def section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}">\n<h2>{html.escape(title)}</h2>\n{body}</section>\n'


def document(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole page: a title, a table of contents, the sections (key, title, body)."""
    nav = "".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t, _ in sections)
    body = "".join(section(k, t, b) for k, t, b in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p class=\"note\">{html.escape(subtitle)}</p>\n<nav>{nav}</nav>\n"
            f"{body}</body></html>\n")
