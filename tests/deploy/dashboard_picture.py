"""A picture of deploy/grafana/surge.json drawn from Prometheus's own answers (Grafana
cannot be installed on this project's machines): each panel's queries over a time range,
as lines in an SVG grid. Hand-written because it is 60 lines of SVG and no plotting
library is a dependency of the project."""

from __future__ import annotations

from html import escape

import httpx

from tests.deploy.test_grafana import panels, substitute

WIDTH, HEIGHT, COLUMNS = 360, 170, 3
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def series(base: str, expr: str, start: float, end: float) -> list[list[tuple[float, float]]]:
    """Every series of `expr` over [start, end], as (time, value) points (NaN dropped)."""
    answer = httpx.get(
        f"{base}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": 1},
        timeout=10,
    ).json()
    assert answer["status"] == "success", (expr, answer)
    lines = []
    for result in answer["data"]["result"]:
        points = [(float(t), float(v)) for t, v in result["values"] if v not in ("NaN", "+Inf")]
        if points:
            lines.append(points)
    return lines


def render(base: str, start: float, end: float) -> tuple[str, dict[str, int]]:
    """The SVG, and the number of series drawn per panel title."""
    drawn: dict[str, int] = {}
    cells: list[str] = []
    for index, panel in enumerate(panels()):
        x0, y0 = (index % COLUMNS) * WIDTH, (index // COLUMNS) * HEIGHT
        lines = [
            line
            for target in panel["targets"]
            for line in series(base, substitute(target["expr"]), start, end)
        ][: len(COLOURS)]
        drawn[panel["title"]] = len(lines)
        top = max((v for line in lines for _, v in line), default=0.0) or 1.0
        cells.append(
            f'<rect x="{x0 + 4}" y="{y0 + 4}" width="{WIDTH - 8}" height="{HEIGHT - 8}" '
            'fill="#fff" stroke="#ccc"/>'
            f'<text x="{x0 + 12}" y="{y0 + 22}" font-size="12">{escape(panel["title"])}</text>'
            f'<text x="{x0 + WIDTH - 12}" y="{y0 + 22}" font-size="10" text-anchor="end" '
            f'fill="#666">max {top:.3g}</text>'
        )
        for colour, line in zip(COLOURS, lines, strict=False):
            points = " ".join(
                f"{x0 + 12 + (t - start) / max(end - start, 1) * (WIDTH - 24):.1f},"
                f"{y0 + HEIGHT - 14 - v / top * (HEIGHT - 44):.1f}"
                for t, v in line
            )
            cells.append(f'<polyline fill="none" stroke="{colour}" points="{points}"/>')
    rows = (len(drawn) + COLUMNS - 1) // COLUMNS
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{COLUMNS * WIDTH}" '
        f'height="{rows * HEIGHT}" font-family="sans-serif">'
        f'<rect width="100%" height="100%" fill="#f4f5f5"/>{"".join(cells)}</svg>'
    )
    return svg, drawn
