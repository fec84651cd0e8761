"""A report's three formats: JSON (its data), Markdown and a self-contained HTML page (inline CSS and
inline SVG charts; no script, no external asset, so a saved file opens offline).  Pure and byte-stable:
keys sorted, numbers already rounded by the kinds, no clock."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from cvops.reports.doc import Bullets, Chart, Doc, Para, Pre, Table

FORMATS = ("json", "md", "html")


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------------------ markdown


def md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = [
        "| " + " | ".join(md_cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    out += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return out


def to_markdown(doc: Doc) -> str:
    lines = [f"# {doc.title}", ""]
    lines += [f"- {label}: {value}" for label, value in doc.facts]
    if doc.facts:
        lines.append("")
    for section in doc.sections:
        lines += [f"## {section.heading}", ""]
        for block in section.blocks:
            if isinstance(block, Para):
                lines.append(f"> {block.text}" if block.highlight or block.warn else block.text)
            elif isinstance(block, Bullets):
                lines += [f"- {item}" for item in block.items]
            elif isinstance(block, Table):
                lines += md_table(block.headers, block.rows) if block.rows else [block.empty]
            elif isinstance(block, Chart):
                lines.append(f"*Chart: {block.alt}* (drawn in the HTML format)")
            elif isinstance(block, Pre):
                lines += [f"```{block.lang}", block.text, "```"]
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------------------- html

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:72rem;
color:#1b1f24;padding:0 1rem;line-height:1.45;background:#fff}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f6f8fa}
.summary{font-size:1.05rem;background:#eef6ee;border-left:4px solid #2da44e;padding:.5rem 1rem}
.none{background:#fff4e5;border-left-color:#d4a72c}
.facts{color:#57606a}ul li{margin:.2rem 0}
code,pre{background:#f6f8fa;padding:.1rem .3rem}pre{padding:.75rem;overflow:auto}
figure{margin:.5rem 0}figcaption{font-size:.8rem;color:#57606a}
svg.chart{display:block;max-width:100%;height:auto}
svg text{font-family:inherit;font-size:12px;fill:#1b1f24}
""".strip()


def h(value: Any) -> str:
    return html.escape(str(value), quote=True)


_NUMBER = re.compile(r"[-+]?[0-9][0-9.,]*(e[-+]?[0-9]+)?%?|–|yes|no")


def _td(cell: str) -> str:
    return f'<td class="n">{h(cell)}</td>' if _NUMBER.fullmatch(cell) else f"<td>{h(cell)}</td>"


def html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(doc: Doc) -> str:
    body: list[str] = [f"<h1>{h(doc.title)}</h1>"]
    if doc.facts:
        body.append('<p class="facts">' + " · ".join(f"{h(k)}: <b>{h(v)}</b>" for k, v in doc.facts) + "</p>")
    for section in doc.sections:
        body.append(f"<h2>{h(section.heading)}</h2>")
        for block in section.blocks:
            if isinstance(block, Para):
                if block.highlight or block.warn:
                    css = "summary none" if block.warn else "summary"
                    body.append(f'<p class="{css}">{h(block.text)}</p>')
                else:
                    body.append(f"<p>{h(block.text)}</p>")
            elif isinstance(block, Bullets):
                body.append("<ul>" + "".join(f"<li>{h(i)}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, Table):
                body.append(
                    html_table(block.headers, block.rows) if block.rows else f"<p>{h(block.empty)}</p>"
                )
            elif isinstance(block, Chart):
                body.append(f"<figure>{block.svg}<figcaption>{h(block.alt)}</figcaption></figure>")
            elif isinstance(block, Pre):
                body.append(f"<pre>{h(block.text)}</pre>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(doc.title)}</title><style>{CSS}</style></head>\n"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def render(data: dict[str, Any], doc: Doc, fmt: str) -> bytes:
    if fmt == "json":
        text = to_json(data)
    elif fmt == "md":
        text = to_markdown(doc)
    else:
        text = to_html(doc)
    return text.encode("utf-8")
