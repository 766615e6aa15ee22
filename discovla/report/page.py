"""HTML building blocks of the run report: escaping, number cells, tables, inline PNGs and the page.

Every text that reaches the page goes through :func:`esc` (``html.escape``); markup built here is wrapped
in :class:`Raw` so that :func:`table` knows not to escape it again. Images are ``data:`` URIs, so the page
needs no other file and no network.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence

PNG_URI = "data:image/png;base64,"


class Raw(str):
    """Markup already escaped (a table cell or a section body built by this package)."""


def esc(value: object) -> str:
    """``value`` as text, HTML-escaped (quotes included, so it is also safe inside attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 1) -> str:
    """A number for a table: floats with ``digits`` decimals, ints with thousands separators, ``–`` for
    missing or NaN values; anything else as its text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def img(png: bytes, alt: str, cls: str = "", title: str = "") -> Raw:
    """An ``<img>`` whose source is the PNG itself (a base64 ``data:`` URI)."""
    attrs = f' class="{esc(cls)}"' if cls else ""
    if title:
        attrs += f' title="{esc(title)}"'
    src = PNG_URI + base64.b64encode(png).decode("ascii")
    return Raw(f'<img src="{src}" alt="{esc(alt)}"{attrs}>')


def _cell(value: object, tag: str, digits: int) -> str:
    if isinstance(value, Raw):
        return f"<{tag}>{value}</{tag}>"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f'<{tag} class="num">{esc(fmt(value, digits))}</{tag}>'
    return f"<{tag}>{esc(fmt(value, digits))}</{tag}>"


def table(
    head: Sequence[object],
    rows: Iterable[Sequence[object]],
    *,
    table_id: str = "",
    groups: Sequence[tuple[str, int]] = (),
    digits: int = 1,
    caption: str = "",
) -> Raw:
    """A ``<table>``: ``head`` cells, then ``rows`` (numbers right-aligned and formatted by :func:`fmt`,
    :class:`Raw` cells inserted as they are, everything else escaped). ``groups`` adds a header row above
    ``head`` of ``(label, column span)``; an empty ``head`` gives a table without header."""
    out = [f'<table id="{esc(table_id)}">' if table_id else "<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    if head:
        out.append("<thead>")
        if groups:
            cells = "".join(f'<th colspan="{int(n)}">{esc(label)}</th>' for label, n in groups)
            out.append(f"<tr>{cells}</tr>")
        out.append("<tr>" + "".join(_cell(h, "th", digits) for h in head) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>" + "".join(_cell(v, "td", digits) for v in row) + "</tr>")
    out.append("</tbody></table>")
    return Raw("".join(out))


def note(text: str, cls: str = "note") -> Raw:
    return Raw(f'<p class="{esc(cls)}">{esc(text)}</p>')


def details(summary: str, body: str) -> Raw:
    return Raw(f"<details><summary>{esc(summary)}</summary>{body}</details>")


def section(section_id: str, title: str, body: str) -> Raw:
    return Raw(f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>{body}</section>')


CSS = """
:root { color-scheme: light; --ok: #1a7f37; --bad: #cf222e; --muted: #57606a; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328;
       background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #d0d7de; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid var(--line); padding: 8px 32px;
      z-index: 1; }
nav a { margin-right: 16px; color: #0969da; text-decoration: none; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 32px 48px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px 20px 16px;
          margin-top: 20px; }
h2 { font-size: 18px; border-bottom: 1px solid var(--line); padding-bottom: 6px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: middle; }
thead th { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: var(--muted); margin: 4px 0 10px; }
.warn { color: var(--bad); font-weight: 600; }
.plot { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.card .caption { font-weight: 600; margin: 2px 0 4px; }
.card table { margin: 4px 0; }
.card td { border: none; border-top: 1px solid #eaeef2; padding: 3px 6px; }
.strip { image-rendering: pixelated; display: block; max-width: 100%; height: auto; }
.twin .pair > div { min-width: 0; }
tr.correct td { background: #dafbe1; }
tr.correct td.mark { color: var(--ok); font-weight: 700; }
tr.truth td { background: #fff8c5; }
.twin .pair { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
.twin .own { border-left: 4px solid var(--ok); padding-left: 6px; }
.twin .other { border-left: 4px solid var(--bad); padding-left: 6px; }
code { background: #eaeef2; padding: 0 4px; border-radius: 4px; }
"""


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: a header, a navigation bar of in-page links and ``(id, title, body)`` sections."""
    nav = "".join(f'<a href="#{esc(sid)}">{esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(section(sid, name, content) for sid, name, content in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
