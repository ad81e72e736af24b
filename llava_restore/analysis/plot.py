"""Small line charts drawn with PIL (matplotlib is not a dependency of this project).

``line_chart`` draws one or more panels side by side; each panel has named series of (x, y)
points, optional horizontal reference lines, axis labels, ticks and a legend.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
DASHES = [None, (8, 5)]  # solid, dashed (cycled after the palette)


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: dict[str, list[tuple[float, float]]]
    hlines: list[tuple[float, str]] = field(default_factory=list)  # (y, label)
    ylim: tuple[float, float] | None = None
    xticks: list[float] | None = None  # default: the distinct x values when few, else "nice" ticks


def _font(size: int):
    return ImageFont.load_default(size=size)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 else f"{v:g}"


def _dashed(draw, p0, p1, color, width, dash):
    if dash is None:
        draw.line([p0, p1], fill=color, width=width)
        return
    (x0, y0), (x1, y1) = p0, p1
    length = math.hypot(x1 - x0, y1 - y0)
    on, off = dash
    pos = 0.0
    while pos < length:
        a, b = pos / length, min(pos + on, length) / length
        draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))], fill=color, width=width)
        pos += on + off


def _style(i: int):
    return PALETTE[i % len(PALETTE)], DASHES[(i // len(PALETTE)) % len(DASHES)]


def _draw_panel(draw, box, panel: Panel, styles: dict[str, tuple], font, small):
    left, top, right, bottom = box
    ml, mr, mt, mb = 70, 15, 35, 55
    x0, y0, x1, y1 = left + ml, top + mt, right - mr, bottom - mb
    draw.text(((left + right) / 2, top + 8), panel.title, fill="black", font=font, anchor="mt")
    pts = [p for s in panel.series.values() for p in s]
    xs = [p[0] for p in pts] or [0.0, 1.0]
    ys = [p[1] for p in pts] + [h[0] for h in panel.hlines] or [0.0, 1.0]
    xlo, xhi = min(xs), max(xs)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    pad = 0.05 * (xhi - xlo)
    xlo, xhi = xlo - pad, xhi + pad
    if panel.ylim is not None:
        ylo, yhi = panel.ylim
    else:
        ylo, yhi = min(ys), max(ys)
        span = (yhi - ylo) or max(abs(yhi), 1.0)
        ylo, yhi = ylo - 0.08 * span, yhi + 0.08 * span

    def X(v):
        return x0 + (v - xlo) / (xhi - xlo) * (x1 - x0)

    def Y(v):
        return y1 - (v - ylo) / (yhi - ylo) * (y1 - y0)

    for t in _nice_ticks(ylo, yhi):
        if ylo <= t <= yhi:
            draw.line([(x0, Y(t)), (x1, Y(t))], fill=(230, 230, 230))
            draw.text((x0 - 6, Y(t)), _fmt(t), fill="black", font=small, anchor="rm")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    distinct = sorted(set(xs))
    xt = panel.xticks if panel.xticks is not None else (distinct if len(distinct) <= 12 else _nice_ticks(xlo, xhi))
    for t in xt:
        if xlo <= t <= xhi:
            draw.line([(X(t), y1), (X(t), y1 + 4)], fill="black")
            draw.text((X(t), y1 + 7), _fmt(t), fill="black", font=small, anchor="mt")
    draw.text(((x0 + x1) / 2, bottom - 8), panel.xlabel, fill="black", font=font, anchor="mb")
    label_img = Image.new("RGBA", (int(y1 - y0), 22), (255, 255, 255, 0))
    ImageDraw.Draw(label_img).text((label_img.width / 2, 11), panel.ylabel, fill="black", font=font, anchor="mm")
    draw._image.paste(label_img.rotate(90, expand=True), (int(left + 4), int(y0)), label_img.rotate(90, expand=True))
    for y, label in panel.hlines:
        if ylo <= y <= yhi:
            _dashed(draw, (x0, Y(y)), (x1, Y(y)), (90, 90, 90), 1, (4, 4))
            draw.text((x1 - 4, Y(y) - 3), label, fill=(90, 90, 90), font=small, anchor="rb")
    for name, series in panel.series.items():
        color, dash = styles[name]
        s = sorted(series)
        for a, b in zip(s, s[1:]):
            _dashed(draw, (X(a[0]), Y(a[1])), (X(b[0]), Y(b[1])), color, 2, dash)
        for x, y in s:
            draw.ellipse([X(x) - 3, Y(y) - 3, X(x) + 3, Y(y) + 3], fill=color)


def line_chart(panels: list[Panel], out_path: str | Path | None = None, panel_size=(520, 380)) -> np.ndarray:
    """Draw the panels side by side with one shared legend below; returns the image (H, W, 3) uint8
    and writes a PNG when ``out_path`` is given."""
    names = list(dict.fromkeys(n for p in panels for n in p.series))
    styles = {n: _style(i) for i, n in enumerate(names)}
    font, small = _font(15), _font(12)
    pw, ph = panel_size
    W = pw * len(panels)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col_w = max([probe.textlength(n, font=small) for n in names] or [0]) + 60  # swatch + gap
    per_row = max(1, min(len(names), int(W // col_w)))
    legend_rows = math.ceil(len(names) / per_row) if names else 0
    H = ph + 22 * legend_rows + 10
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    for i, panel in enumerate(panels):
        _draw_panel(draw, (i * pw, 0, (i + 1) * pw, ph), panel, styles, font, small)
    col_w = W / per_row if per_row else W
    for i, name in enumerate(names):
        r, c = divmod(i, per_row)
        x, y = 10 + c * col_w, ph + 5 + r * 22
        color, dash = styles[name]
        _dashed(draw, (x, y + 8), (x + 28, y + 8), color, 3, dash)
        draw.text((x + 34, y + 8), name, fill="black", font=small, anchor="lm")
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        img.save(out_path)
    return np.asarray(img)
