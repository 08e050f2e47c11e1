"""The look every tunelab report shares: table cells, matplotlib figures inlined as PNG and one
self-contained HTML page (`compare`, `sweep` and `compress-report` write theirs with these)."""

from __future__ import annotations

import base64
import html
import io

STYLE = """body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 14px; } td, th { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; } figure { display: inline-block; margin: 1em; } img { width: 480px; }"""


def figure_png(draw) -> str:
    """A 6x4 inch figure drawn by `draw(ax)`, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def cell_text(row: dict, key: str) -> str:
    """A table cell: "-" when missing, an interval for `ci95`, 3 decimals for the quality `value`."""
    value = row.get(key)
    if value is None:
        return "-"
    if key == "ci95":
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    if isinstance(value, float):
        return f"{value:.3f}" if key == "value" else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def html_table(headers: list[str], rows: list[list]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def figures_html(figures: dict[str, str]) -> str:
    return "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for title, png in figures.items()
    )


def html_page(title: str, body: str) -> str:
    """`body` is HTML already (escape the users' text in it)."""
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>\n{STYLE}\n</style></head><body><h1>{html.escape(title)}</h1>\n{body}</body></html>"
    )
