"""Inline SVG charts (no library, no network): daily series as lines or bars.

Every text that ends up in the SVG (series names are labels from pings) is escaped.
"""

from __future__ import annotations

from html import escape

COLORS = ("#1f6feb", "#d9480f", "#2f9e44", "#9c36b5", "#e8590c", "#0b7285")
W, H = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 48


def _fmt(v: float) -> str:
    if v is None:
        return ""
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.3g}k"
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.3g}"


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    import math

    exp = 10 ** math.floor(math.log10(v))
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * exp:
            return step * exp
    return 10 * exp


def chart_svg(series: list[dict], *, title: str = "", bars: bool = False, css_class: str = "chart") -> str:
    """series: [{"name", "points": [[day, value], ...]}] -> an <svg> element (empty-state text if no data)."""
    days = sorted({p[0] for s in series for p in s["points"]})
    values = [p[1] for s in series for p in s["points"] if p[1] is not None]
    label = escape(title or "chart")
    if not days or not values:
        return (f'<svg class="{css_class}" role="img" aria-label="{label}" viewBox="0 0 {W} 60" width="{W}" height="60">'
                '<text x="8" y="34" class="empty">no data yet</text></svg>')
    ymax = _nice_max(max(max(values), 0))
    ymin = min(0, min(values))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    xs = {d: LEFT + (pw * (i + 0.5) / len(days)) for i, d in enumerate(days)}
    y = lambda v: TOP + ph - (ph * (v - ymin) / ((ymax - ymin) or 1))
    out = [f'<svg class="{css_class}" role="img" aria-label="{label}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
           'xmlns="http://www.w3.org/2000/svg">', f"<title>{label}</title>"]
    for i in range(5):  # grid and y labels
        v = ymin + (ymax - ymin) * i / 4
        yy = y(v)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(f'<text class="axis" x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{escape(_fmt(v))}</text>')
    step = max(1, len(days) // 6)
    for i, d in enumerate(days):
        if i % step == 0 or i == len(days) - 1:
            out.append(f'<text class="axis" x="{xs[d]:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">'
                       f"{escape(str(d)[5:] if len(str(d)) == 10 else str(d))}</text>")
    n = len(series)
    for si, s in enumerate(series):
        color = COLORS[si % len(COLORS)]
        pts = [(d, v) for d, v in s["points"] if v is not None]
        name = escape(str(s["name"]))
        if bars:
            bw = max(2.0, pw / len(days) * 0.8 / n)
            for d, v in pts:
                x0 = xs[d] - (bw * n) / 2 + bw * si
                out.append(f'<rect class="bar" x="{x0:.1f}" y="{y(v):.1f}" width="{bw:.1f}" '
                           f'height="{max(0.0, y(ymin) - y(v)):.1f}" fill="{color}"><title>{name} {escape(str(d))}: '
                           f"{escape(_fmt(v))}</title></rect>")
        else:
            if len(pts) > 1:
                path = " ".join(f"{xs[d]:.1f},{y(v):.1f}" for d, v in pts)
                out.append(f'<polyline class="line" fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
            for d, v in pts:
                out.append(f'<circle class="point" cx="{xs[d]:.1f}" cy="{y(v):.1f}" r="3" fill="{color}">'
                           f"<title>{name} {escape(str(d))}: {escape(_fmt(v))}</title></circle>")
    for si, s in enumerate(series):  # legend
        x0 = LEFT + si * 120
        out.append(f'<rect x="{x0}" y="{H - 20}" width="10" height="10" fill="{COLORS[si % len(COLORS)]}"/>'
                   f'<text class="legend" x="{x0 + 14}" y="{H - 11}">{escape(str(s["name"])[:16])}</text>')
    out.append("</svg>")
    return "".join(out)
