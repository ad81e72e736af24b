"""Deterministic rendering of a ``Scene`` to a 96x96 RGB image (PNG bytes on request).

Only integer-coordinate PIL primitives, PIL's built-in bitmap font (scaled up with nearest
neighbour) and a noise image made from ``random.Random(noise_seed).randbytes`` are used, so the
pixels are a pure function of the scene: byte-identical for the same seed on the same Pillow.
"""
from __future__ import annotations

import io
import math
import random
from functools import lru_cache
from typing import Tuple

from PIL import Image, ImageChops, ImageDraw, ImageFont

from llava_restore.playground import vocab
from llava_restore.playground.scene import Obj, Scene

TRAIL_STRENGTH = (0.55, 0.3)  # colour strength of the 1st and 2nd trail copy of a moving object
SHADE = 0.55  # a fill pattern's dark pixels: this fraction of the object's colour

# Each shape has its own period-2 fill pattern as well as its outline, so that one 4x4 patch inside
# an object already shows its shape (the tiny ViT does not learn shape from outlines alone within
# its CPU budget; see playground/README.md). True = a dark pixel; (x, y) are image coordinates.
FILL_PATTERNS = {
    "square": lambda x, y: y % 2 == 0,  # horizontal stripes
    "circle": lambda x, y: x % 2 == 0,  # vertical stripes
    "triangle": lambda x, y: (x + y) % 2 == 0,  # checkerboard
    "diamond": lambda x, y: x % 2 == 0 and y % 2 == 0,  # sparse dots
    "cross": lambda x, y: False,  # solid
    "ring": lambda x, y: not (x % 2 == 0 and y % 2 == 0),  # dense dots
    # period 4 (a patch is 4x4 and starts at a multiple of 4, so every patch shows the same pixels)
    "star": lambda x, y: (x + y) % 4 < 2,  # thick diagonal stripes
    "hexagon": lambda x, y: (x - y) % 4 < 2,  # thick anti-diagonal stripes
    "pentagon": lambda x, y: y % 4 < 2,  # thick horizontal stripes
    "arrow": lambda x, y: x % 4 < 2,  # thick vertical stripes
}


@lru_cache(maxsize=32)
def _pattern_mask(shape: str, size: Tuple[int, int]) -> Image.Image:
    """'L' image, 255 where ``shape``'s fill pattern has a dark pixel."""
    pat = FILL_PATTERNS[shape]
    w, h = size
    return Image.frombytes("L", size, bytes(255 if pat(x, y) else 0 for y in range(h) for x in range(w)))


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    load = getattr(ImageFont, "load_default_imagefont", None)
    if load is None:
        raise RuntimeError("the playground needs Pillow >= 10.1 (ImageFont.load_default_imagefont, "
                           f"the built-in bitmap font); found Pillow {Image.__version__}")
    return load()


@lru_cache(maxsize=4096)
def _text_mask(text: str, scale: int) -> Image.Image:
    """The ink of ``text`` in the bitmap font, cropped to its bounding box, scaled by ``scale``."""
    if scale < 1:
        raise ValueError(f"text scale must be >= 1, got {scale}")
    font = _font()
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, font=font, fill=255)
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"text {text!r} has no ink in the bitmap font")
    ink = canvas.crop(box)
    return ink.resize((ink.width * scale, ink.height * scale), Image.Resampling.NEAREST)


def text_size(text: str, scale: int) -> Tuple[int, int]:
    """(width, height) in pixels of the rendered ``text`` at ``scale``."""
    return _text_mask(text, scale).size


def _mix(a: vocab.RGB, b: vocab.RGB, t: float) -> vocab.RGB:
    """t * a + (1 - t) * b, rounded per channel."""
    return tuple(int(round(t * x + (1 - t) * y)) for x, y in zip(a, b))


def _draw_shape(img: Image.Image, shape: str, x: int, y: int, w: int, fill: vocab.RGB) -> None:
    """The shape's outline filled with ``fill``, then its fill pattern's dark pixels."""
    if shape not in FILL_PATTERNS:
        raise ValueError(f"unknown shape {shape!r}; known: {vocab.SHAPES}")
    mask = Image.new("L", img.size, 0)
    _outline(ImageDraw.Draw(mask), shape, x, y, w, 255)
    img.paste(fill, (0, 0), mask)
    dark = ImageChops.multiply(mask, _pattern_mask(shape, img.size))
    img.paste(_mix(fill, (0, 0, 0), SHADE), (0, 0), dark)


def _outline(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, w: int, fill) -> None:
    x1, y1, half = x + w - 1, y + w - 1, w // 2
    if shape == "square":
        draw.rectangle([x, y, x1, y1], fill=fill)
    elif shape == "circle":
        draw.ellipse([x, y, x1, y1], fill=fill)
    elif shape == "ring":
        draw.ellipse([x, y, x1, y1], outline=fill, width=max(2, w // 4))
    elif shape == "triangle":
        draw.polygon([(x + half, y), (x1, y1), (x, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x + half, y), (x1, y + half), (x + half, y1), (x, y + half)], fill=fill)
    elif shape == "cross":
        t = max(2, w // 3)
        o = (w - t) // 2
        draw.rectangle([x + o, y, x + o + t - 1, y1], fill=fill)
        draw.rectangle([x, y + o, x1, y + o + t - 1], fill=fill)
    elif shape in _POLYGONS:
        draw.polygon([(x + round(u * (w - 1)), y + round(v * (w - 1))) for u, v in _POLYGONS[shape]], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {vocab.SHAPES}")


def _regular(n: int, inner: float = 1.0, turn: float = -math.pi / 2):
    """Unit-box vertices of a regular n-gon (``inner`` < 1: a 2n-point star with that inner radius)."""
    k = 2 * n if inner < 1.0 else n
    radius = [1.0 if (j % 2 == 0 or inner >= 1.0) else inner for j in range(k)]
    return [(0.5 + 0.5 * r * math.cos(turn + 2 * math.pi * j / k), 0.5 + 0.5 * r * math.sin(turn + 2 * math.pi * j / k))
            for j, r in enumerate(radius)]


# Polygon outlines in the unit box (u, v in [0, 1]), scaled to the object's box.
_POLYGONS = {
    "star": _regular(5, inner=0.45),
    "hexagon": _regular(6, turn=0.0),
    "pentagon": _regular(5),
    "arrow": [(0.0, 0.3), (0.55, 0.3), (0.55, 0.0), (1.0, 0.5), (0.55, 1.0), (0.55, 0.7), (0.0, 0.7)],
}


def _trail_offsets(direction: str, step: int):
    """Offsets (dx, dy) of the trail copies, nearest first: behind the direction of motion."""
    unit = {"right": (-1, 0), "left": (1, 0), "down": (0, -1), "up": (0, 1)}
    if direction not in unit:
        raise ValueError(f"unknown direction {direction!r}; known: {vocab.DIRECTIONS}")
    ux, uy = unit[direction]
    return [(ux * step * k, uy * step * k) for k in (1, 2)]


def _background(scene: Scene) -> Image.Image:
    bg = vocab.BACKGROUNDS[scene.background]
    size = (scene.width, scene.height)
    a = scene.noise
    if a <= 0:
        return Image.new("RGB", size, bg)
    base = Image.new("RGB", size, tuple(max(0, c - a) for c in bg))
    raw = random.Random(scene.noise_seed).randbytes(scene.width * scene.height)
    noise = Image.frombytes("L", size, raw).point([v * 2 * a // 255 for v in range(256)])
    return ImageChops.add(base, Image.merge("RGB", (noise, noise, noise)))


def render(scene: Scene) -> Image.Image:
    """The scene's pixels: background, trails, objects, then texts."""
    img = _background(scene)
    bg = vocab.BACKGROUNDS[scene.background]
    if scene.motion is not None:
        o: Obj = scene.objects[scene.motion.index]
        offsets = _trail_offsets(scene.motion.direction, scene.motion.step)
        for (dx, dy), strength in reversed(list(zip(offsets, TRAIL_STRENGTH))):
            _draw_shape(img, o.shape, o.x + dx, o.y + dy, o.w, _mix(vocab.COLORS[o.color], bg, strength))
    for o in scene.objects:
        _draw_shape(img, o.shape, o.x, o.y, o.w, vocab.COLORS[o.color])
    for t in scene.texts:
        mask = _text_mask(t.text, scene.text_scale)
        if mask.size != (t.w, t.h):
            raise ValueError(f"text {t.text!r}: scene says {t.w}x{t.h}, font renders {mask.size}")
        img.paste(vocab.COLORS[t.color], (t.x, t.y, t.x + t.w, t.y + t.h), mask)
    return img


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding without metadata (deterministic for a given Pillow/zlib)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
