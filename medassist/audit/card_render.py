"""A model card rendered from its blocks (``medassist.audit.card_layout``): Markdown with linked
figures, and a self-contained HTML page with embedded ones. Text may use **bold**, *emphasis* and
`code`; everything else is literal."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from medassist.audit.card_layout import Bullets, Figure, Heading, Paragraph, Table, Warning, blocks
from medassist.audit.html_style import REPORT_CSS

_INLINE = re.compile(r"(\*\*[^*]+\*\*|`[^`]+`|\*[^*]+\*)")


def _md_cell(value) -> str:
    return str(value if value is not None else "").replace("|", "\\|").replace("\n", " ")


def render_markdown(card: dict, figures: dict[str, Path] | None = None, *, base: Path | None = None) -> str:
    """Markdown; figures are linked by their path relative to ``base`` (the card's folder)."""
    figures = figures or {}
    lines: list[str] = []
    for block in blocks(card, figures):
        match block:
            case Heading(level, text):
                lines += ["#" * level + " " + text, ""]
            case Paragraph(text):
                lines += [text, ""]
            case Warning(text):
                lines += [f"> **Warning:** {text}", ""]
            case Bullets(items):
                lines += [f"- {item}" for item in items] + [""]
            case Table(headers, rows):
                lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
                lines.append("|" + "|".join("---" for _ in headers) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                lines.append("")
            case Figure(key, caption):
                path = figures[key]
                rel = path.name if base is None else Path(_relative(path, base))
                lines += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def _inline_html(text: str) -> str:
    parts = []
    for piece in _INLINE.split(str(text)):
        if piece.startswith("**") and piece.endswith("**") and len(piece) > 4:
            parts.append(f"<strong>{html.escape(piece[2:-2])}</strong>")
        elif piece.startswith("`") and piece.endswith("`") and len(piece) > 2:
            parts.append(f"<code>{html.escape(piece[1:-1])}</code>")
        elif piece.startswith("*") and piece.endswith("*") and len(piece) > 2:
            parts.append(f"<em>{html.escape(piece[1:-1])}</em>")
        else:
            parts.append(html.escape(piece))
    return "".join(parts)


def render_html(card: dict, figures: dict[str, Path] | None = None) -> str:
    """A self-contained HTML page; figures embedded as base64 PNG."""
    figures = figures or {}
    title = f"Model card: {card['model_details']['name']} {card['model_details']['version']}"
    body: list[str] = []
    for block in blocks(card, figures):
        match block:
            case Heading(level, text):
                body.append(f"<h{level}>{_inline_html(text)}</h{level}>")
            case Paragraph(text):
                body.append(f"<p>{_inline_html(text)}</p>")
            case Warning(text):
                body.append(f'<div class="warn"><strong>Warning:</strong> {_inline_html(text)}</div>')
            case Bullets(items):
                body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in items) + "</ul>")
            case Table(headers, rows):
                head = "".join(f"<th>{_inline_html(h)}</th>" for h in headers)
                cells = "".join("<tr>" + "".join(f"<td>{_inline_html(c if c is not None else '')}</td>" for c in row)
                                + "</tr>" for row in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            case Figure(key, caption):
                data = base64.b64encode(Path(figures[key]).read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_inline_html(caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{REPORT_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
