"""Server-rendered inline SVG charts for the model page: no JavaScript, no external assets.

Every function takes a part of a version's validated metrics and returns SVG markup as `Markup`
(safe for Jinja), or an empty `Markup` when there is nothing to draw. All text is escaped with
markupsafe.escape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from urllib.parse import urlencode

from markupsafe import Markup, escape

from app.schemas.metrics import ConfusionMatrix, LearningCurve

FONT_SIZE = 13
SMALL_FONT = 12
CHAR_WIDTH = 0.62  # average glyph width of the UI font, in font sizes (good enough for layout)
MAX_LABEL_CHARS = 16
# A chart is drawn at its natural size and scales down with the page, but never below this share
# of it: on a phone a wide chart scrolls sideways (inside .chart-wrap) instead of becoming tiny.
# The floor is a data attribute that app.js applies: the CSP allows no inline style.
MIN_SCALE = 0.68

CORRECT_RGB = (22, 128, 78)
WRONG_RGB = (200, 50, 40)
LINE = "#dde1e8"
TEXT = "#1d2330"
MUTED = "#5d6678"
ACCENT = "#2456d3"


def _fmt(value: float) -> str:
    """A coordinate with at most one decimal, without a trailing '.0'."""
    text = f"{value:.1f}"
    return text.removesuffix(".0")


def _text_width(text: str, size: float = FONT_SIZE) -> float:
    return len(text) * size * CHAR_WIDTH


def truncate(text: str, limit: int = MAX_LABEL_CHARS) -> str:
    """`text` cut to `limit` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _label(text: str, *, x: float, y: float, anchor: str = "start", size: int = FONT_SIZE,
           limit: int = MAX_LABEL_CHARS, extra: str = "", css: str = "") -> str:
    """A <text> element, truncated with the full text in a <title> tooltip when cut."""
    shown = truncate(text, limit)
    title = f"<title>{escape(text)}</title>" if shown != text else ""
    cls = f' class="{escape(css)}"' if css else ""
    return (f'<text x="{_fmt(x)}" y="{_fmt(y)}" text-anchor="{anchor}" font-size="{size}"'
            f'{cls}{extra}>{title}{escape(shown)}</text>')


def _svg(width: float, height: float, body: Iterable[str], *, title: str, desc: str,
         css: str) -> Markup:
    width, height = math.ceil(width), math.ceil(height)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {escape(css)}" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'data-min-width="{round(width * MIN_SCALE)}" '
        f'font-family="system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif" '
        f'fill="{TEXT}"><title>{escape(title)}</title><desc>{escape(desc)}</desc>'
        + "".join(body) + "</svg>"
    )


# --- confusion matrix ---------------------------------------------------------------------------


def confusion_matrix_svg(confusion: ConfusionMatrix, *, mistakes_url: str | None = None) -> Markup:
    """The confusion matrix as a grid: rows the true category, columns the predicted one.

    Cells are shaded by their share of the row (green on the diagonal, red off it) and show the
    count; every cell has a tooltip with the count, the row total and the share, and the
    description lists every count for screen readers. With `mistakes_url`, every off-diagonal
    cell with a count links there, with `true` and `predicted` in the query, to its images.
    """
    names, counts = list(confusion.labels), confusion.matrix
    n = len(names)
    if n == 0:
        return Markup("")
    if len({truncate(name) for name in names}) < n:
        # Truncation made two labels alike: number them so each row and column is still told
        # apart (the full names are in the tooltips and in the per-category table).
        names = [f"{i + 1}. {name}" for i, name in enumerate(names)]

    cell = 56 if n <= 4 else 46 if n <= 7 else 40
    shown = [truncate(name) for name in names]
    longest = max(_text_width(name) for name in shown)
    # Column labels sit above the grid: level when they fit a cell, else slanted at 45 degrees.
    slanted = longest > cell - 6
    col_band = (longest * math.sqrt(0.5) + FONT_SIZE if slanted else FONT_SIZE + 6)
    axis_title = FONT_SIZE + 10
    left = axis_title + longest + 14
    top = axis_title + col_band + 6
    grid = n * cell
    # A slanted label leans right past the grid's right edge by about its projected length.
    right = (longest * math.sqrt(0.5) - cell / 2 + 8) if slanted else 8
    width = left + grid + max(right, 8)
    height = top + grid + 8

    body: list[str] = []
    body.append(_label("Predicted category", x=left + grid / 2, y=FONT_SIZE + 2,
                       anchor="middle", limit=64, css="axis-title",
                       extra=' font-weight="600"'))
    true_y = top + grid / 2
    body.append(_label("True category", x=FONT_SIZE + 2, y=true_y, anchor="middle",
                       limit=64, css="axis-title",
                       extra=f' font-weight="600" transform="rotate(-90 {_fmt(FONT_SIZE + 2)} '
                             f'{_fmt(true_y)})"'))
    for j, name in enumerate(names):
        cx = left + j * cell + cell / 2
        if slanted:
            y = top - 8
            body.append(_label(name, x=cx, y=y, extra=f' transform="rotate(-45 {_fmt(cx)} '
                                                       f'{_fmt(y)})"'))
        else:
            body.append(_label(name, x=cx, y=top - 8, anchor="middle"))
    for i, name in enumerate(names):
        body.append(_label(name, x=left - 8, y=top + i * cell + cell / 2 + FONT_SIZE * 0.35,
                           anchor="end"))

    for i, row in enumerate(counts):
        total = sum(row)
        for j, count in enumerate(row):
            share = count / total if total else 0.0
            rgb = CORRECT_RGB if i == j else WRONG_RGB
            x, y = left + j * cell, top + i * cell
            fill = f"rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {share * 0.85:.2f})"
            tip = (f"true {names[i]}, predicted {names[j]}: {count} of {total} "
                   f"({share * 100:.0f}%)")
            color = "#ffffff" if share > 0.55 else TEXT
            weight = ' font-weight="700"' if i == j else ""
            drawn = (
                f'<g class="cm-cell"><title>{escape(tip)}</title>'
                f'<rect x="{_fmt(x)}" y="{_fmt(y)}" width="{cell}" height="{cell}" '
                f'fill="{fill}" stroke="{LINE}"/>'
                f'<text x="{_fmt(x + cell / 2)}" y="{_fmt(y + cell / 2 + FONT_SIZE * 0.35)}" '
                f'text-anchor="middle" font-size="{FONT_SIZE}" fill="{color}"{weight}>'
                f"{count}</text></g>"
            )
            if mistakes_url is not None and i != j and count:
                query = urlencode({"true": names[i], "predicted": names[j]})
                href = escape(f"{mistakes_url}?{query}#confusions")
                drawn = f'<a href="{href}" class="cm-link">{drawn}</a>'
            body.append(drawn)
    body.append(f'<rect x="{_fmt(left)}" y="{_fmt(top)}" width="{grid}" height="{grid}" '
                f'fill="none" stroke="{MUTED}"/>')
    correct = sum(counts[i][i] for i in range(n))
    total = sum(map(sum, counts))
    rows = ". ".join(f"True {names[i]}: " + ", ".join(f"predicted {names[j]} {count}"
                                                      for j, count in enumerate(row))
                     for i, row in enumerate(counts))
    return _svg(width, height, body, css="confusion-chart",
                title="Confusion matrix: rows are the true category, columns the predicted one",
                desc=f"{correct} of {total} images predicted correctly. {rows}.")


# --- learning curve -----------------------------------------------------------------------------


def _log_ticks(low: float, high: float) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... within [low, high]; the thinner 1, 10, 100 ladder if crowded."""
    ticks: list[int] = []
    scale = 1
    while scale <= high:
        ticks.extend(m * scale for m in (1, 2, 5) if low <= m * scale <= high)
        scale *= 10
    if len(ticks) > 8:
        ticks = [t for t in ticks if str(t).startswith("1")]
    return ticks


def learning_curve_svg(curve: LearningCurve, *, chance: float | None = None) -> Markup:
    """Accuracy against training images per category, log-scale x axis.

    The measured points are drawn with mean ± std as error bars, the projection dashed from the
    last measured point. `chance` (1 / number of categories) draws a dotted guessing line.
    """
    measured: list[tuple[int, float, float | None]] = sorted(
        ((p.images_per_class, p.accuracy, p.std) for p in curve.points), key=lambda p: p[0])
    projected: list[tuple[int, float, float | None]] = sorted(
        ((p.images_per_class, p.accuracy, None) for p in curve.projection), key=lambda p: p[0])
    if not measured and not projected:
        return Markup("")

    width, height = 460.0, 300.0
    left, right, top, bottom = 56.0, 14.0, 32.0, 50.0
    plot_w, plot_h = width - left - right, height - top - bottom

    sizes = [float(p[0]) for p in measured + projected]
    x_low, x_high = min(sizes), max(sizes)
    if x_high / x_low < 4:  # one point, or a narrow range: widen around it
        middle = math.sqrt(x_low * x_high)
        x_low, x_high = max(middle / 2.5, 0.8), max(middle * 2.5, x_high * 1.2)
    log_low, log_high = math.log(x_low) - 0.12, math.log(x_high) + 0.12

    lows = [max(acc - (std or 0.0), 0.0) for _, acc, std in measured + projected]
    if chance is not None:
        lows.append(chance)
    lowest = min(lows)
    y_low = max(0.0, math.floor((lowest - 0.02) * 10) / 10)
    y_high = 1.0
    step = 0.1 if y_high - y_low <= 0.5 else 0.2
    y_low = math.floor(y_low / step + 1e-9) * step

    def sx(n: float) -> float:
        return left + (math.log(n) - log_low) / (log_high - log_low) * plot_w

    def sy(accuracy: float) -> float:
        return top + (y_high - accuracy) / (y_high - y_low) * plot_h

    body: list[str] = []
    # Grid and y ticks.
    tick = y_low
    while tick <= y_high + 1e-9:
        y = sy(tick)
        body.append(f'<line x1="{_fmt(left)}" x2="{_fmt(left + plot_w)}" y1="{_fmt(y)}" '
                    f'y2="{_fmt(y)}" stroke="{LINE}"/>')
        body.append(_label(f"{tick * 100:.0f}%", x=left - 6, y=y + SMALL_FONT * 0.35,
                           anchor="end", size=SMALL_FONT, extra=f' fill="{MUTED}"'))
        tick += step
    for size in _log_ticks(math.exp(log_low), math.exp(log_high)):
        x = sx(size)
        body.append(f'<line x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{_fmt(top)}" '
                    f'y2="{_fmt(top + plot_h)}" stroke="{LINE}"/>')
        body.append(_label(f"{size:,}", x=x, y=top + plot_h + SMALL_FONT + 5, anchor="middle",
                           size=SMALL_FONT, extra=f' fill="{MUTED}"'))
    # Axes on the left and at the bottom only: a frame on top would hide a curve at 100%.
    body.append(f'<path d="M{_fmt(left)} {_fmt(top)}V{_fmt(top + plot_h)}H{_fmt(left + plot_w)}" '
                f'fill="none" stroke="{MUTED}"/>')
    # Axis titles.
    body.append(_label("Training images per category (log scale)", x=left + plot_w / 2,
                       y=height - 8, anchor="middle", limit=80, css="axis-title",
                       extra=' font-weight="600"'))
    mid_y = top + plot_h / 2
    body.append(_label("Accuracy", x=14, y=mid_y, anchor="middle", limit=80, css="axis-title",
                       extra=f' font-weight="600" transform="rotate(-90 14 {_fmt(mid_y)})"'))

    if chance is not None:
        y = sy(chance)
        body.append(f'<line x1="{_fmt(left)}" x2="{_fmt(left + plot_w)}" y1="{_fmt(y)}" '
                    f'y2="{_fmt(y)}" stroke="{MUTED}" stroke-dasharray="1 4" '
                    f'stroke-linecap="round" stroke-width="1.5"/>')
        body.append(_label(f"guessing ({chance * 100:.0f}%)", x=left + plot_w - 4, y=y - 4,
                           anchor="end", size=SMALL_FONT, limit=40, extra=f' fill="{MUTED}"'))

    # Projection first, so the measured line is drawn over its start.
    if projected:
        start = [measured[-1]] if measured else []
        path = [(sx(n), sy(acc)) for n, acc, _ in start + projected]
        if len(path) > 1:
            body.append('<polyline class="lc-projection" fill="none" stroke="' + ACCENT
                        + '" stroke-width="2" stroke-dasharray="6 5" points="'
                        + " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in path) + '"/>')
        for n, acc, _ in projected:
            tip = f"projected: {n:,.0f} images per category → {acc * 100:.0f}% accuracy"
            body.append(f'<circle cx="{_fmt(sx(n))}" cy="{_fmt(sy(acc))}" r="4" fill="#ffffff" '
                        f'stroke="{ACCENT}" stroke-width="2"><title>{escape(tip)}</title>'
                        f"</circle>")
    if measured:
        if len(measured) > 1:
            body.append('<polyline class="lc-measured" fill="none" stroke="' + ACCENT
                        + '" stroke-width="2.5" points="'
                        + " ".join(f"{_fmt(sx(n))},{_fmt(sy(a))}" for n, a, _ in measured)
                        + '"/>')
        for n, acc, std in measured:
            x = sx(n)
            if std:
                y1, y2 = sy(min(acc + std, 1.0)), sy(max(acc - std, 0.0))
                body.append(
                    f'<path class="lc-error" d="M{_fmt(x)} {_fmt(y1)}V{_fmt(y2)}'
                    f'M{_fmt(x - 4)} {_fmt(y1)}h8M{_fmt(x - 4)} {_fmt(y2)}h8" '
                    f'stroke="{ACCENT}" stroke-width="1.25" fill="none" opacity="0.7"/>')
            spread = f" ± {std * 100:.1f}%" if std else ""
            tip = f"measured: {n:,.0f} images per category → {acc * 100:.1f}%{spread} accuracy"
            body.append(f'<circle cx="{_fmt(x)}" cy="{_fmt(sy(acc))}" r="4.5" fill="{ACCENT}">'
                        f"<title>{escape(tip)}</title></circle>")

    # Legend above the plot area, where it cannot cover the curve.
    legend_y = 16.0
    x = left
    if measured:
        body.append(f'<line x1="{_fmt(x)}" x2="{_fmt(x + 22)}" y1="{_fmt(legend_y - 4)}" '
                    f'y2="{_fmt(legend_y - 4)}" stroke="{ACCENT}" stroke-width="2.5"/>'
                    f'<circle cx="{_fmt(x + 11)}" cy="{_fmt(legend_y - 4)}" r="4" '
                    f'fill="{ACCENT}"/>')
        text = "measured ± spread" if any(p[2] for p in measured) else "measured"
        body.append(_label(text, x=x + 28, y=legend_y, size=SMALL_FONT, limit=80))
        x += 28 + _text_width(text, SMALL_FONT) + 18
    if projected:
        body.append(f'<line x1="{_fmt(x)}" x2="{_fmt(x + 22)}" y1="{_fmt(legend_y - 4)}" '
                    f'y2="{_fmt(legend_y - 4)}" stroke="{ACCENT}" stroke-width="2" '
                    f'stroke-dasharray="6 5"/>')
        body.append(_label("projected", x=x + 28, y=legend_y,
                           size=SMALL_FONT, limit=80))

    described = "; ".join(f"{n:,.0f}: {acc * 100:.0f}%" for n, acc, _ in measured)
    projected_text = "; ".join(f"{n:,.0f}: {acc * 100:.0f}%" for n, acc, _ in projected)
    desc = "Accuracy by training images per category. Measured " + (described or "none")
    if projected_text:
        desc += ". Projected " + projected_text
    return _svg(width, height, body, css="curve-chart", title="Learning curve", desc=desc + ".")
