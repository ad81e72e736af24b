"""Scene descriptions: objects (colour, shape, size, position), rendered texts, optional motion.

A scene is pure data. ``sample_scene(rng, cfg)`` draws one from a ``random.Random``;
``render.render(scene)`` turns it into pixels. Geometry helpers (relations, quadrants, unique
descriptions) live here so that questions and tests derive answers from the same definitions.
Coordinates are integers; centres are kept doubled (``cx2 = 2 * x + w``) to stay integral.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from llava_restore.playground import vocab

Rect = Tuple[int, int, int, int]  # x, y, w, h


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    x: int
    y: int
    w: int

    @property
    def cx2(self) -> int:  # doubled centre x
        return 2 * self.x + self.w

    @property
    def cy2(self) -> int:  # doubled centre y
        return 2 * self.y + self.w

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Text:
    text: str
    color: str
    kind: str  # word | number | digits | nonsense | expression
    x: int
    y: int
    w: int
    h: int

    @property
    def cx2(self) -> int:
        return 2 * self.x + self.w

    @property
    def cy2(self) -> int:
        return 2 * self.y + self.h


@dataclass(frozen=True)
class Motion:
    index: int  # which object moves
    direction: str  # left | right | up | down
    step: int  # pixels between the object and each of its two trail copies


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str
    noise: int  # amplitude of the grey background noise
    noise_seed: int
    text_scale: int
    objects: Tuple[Obj, ...]
    texts: Tuple[Text, ...] = ()
    motion: Optional[Motion] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "Scene":
        motion = Motion(**d["motion"]) if d.get("motion") else None
        return Scene(
            width=d["width"], height=d["height"], background=d["background"], noise=d["noise"],
            noise_seed=d["noise_seed"], text_scale=d["text_scale"],
            objects=tuple(Obj(**o) for o in d["objects"]),
            texts=tuple(Text(**t) for t in d["texts"]), motion=motion,
        )


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Benchmarks derive their variants with ``dataclasses.replace``."""

    width: int = 96
    height: int = 96
    min_objects: int = 3
    max_objects: int = 6
    small_prob: float = 0.6  # probability that an object is small
    favour_prob: float = 0.6  # probability to draw colour (shape) from the scene's 2 colours (shape group)
    text_prob: float = 0.4  # probability of at least one text
    second_text_prob: float = 0.35  # probability of a second text, given one
    text_kinds: Tuple[Tuple[str, float], ...] = (("word", 0.6), ("number", 0.4))
    text_scale: int = 2  # the 6x11 bitmap font scaled so a glyph spans about 3x4 patches
    motion_prob: float = 0.0
    motion_step: int = 5
    noise: int = 6
    gap: int = 3  # minimum free pixels between two items
    margin: int = 2  # minimum free pixels to the image border
    max_tries: int = 200


REL_MARGIN = 4  # pixels: centres closer than this on an axis have no clear relation on it


# ----------------------------------------------------------------------------- geometry


def relation_holds(a: Obj, b: Obj, rel: str, margin: int = REL_MARGIN) -> bool:
    """True when ``a`` is clearly ``rel`` (left/right/above/below) of ``b``."""
    m2 = 2 * margin
    if rel == "left":
        return a.cx2 < b.cx2 - m2
    if rel == "right":
        return a.cx2 > b.cx2 + m2
    if rel == "above":
        return a.cy2 < b.cy2 - m2
    if rel == "below":
        return a.cy2 > b.cy2 + m2
    raise ValueError(f"unknown relation {rel!r}; known: {sorted(vocab.RELATIONS)}")


def clear_on_axis(a: Obj, b: Obj, axis: str, margin: int = REL_MARGIN) -> bool:
    """True when ``a`` and ``b`` are clearly apart on ``axis`` ('x' or 'y')."""
    d2 = a.cx2 - b.cx2 if axis == "x" else a.cy2 - b.cy2
    return abs(d2) > 2 * margin


def side_of_image(o: Obj, scene: Scene, axis: str, margin: int = REL_MARGIN) -> Optional[str]:
    """'left'/'right' (axis x) or 'top'/'bottom' (axis y) half of the image, None near the middle."""
    c2, full = (o.cx2, scene.width) if axis == "x" else (o.cy2, scene.height)
    if c2 < full - 2 * margin:
        return "left" if axis == "x" else "top"
    if c2 > full + 2 * margin:
        return "right" if axis == "x" else "bottom"
    return None


def quadrant(o: Obj, scene: Scene, margin: int = REL_MARGIN) -> Optional[str]:
    """'top left' ... 'bottom right', None when the object is near a middle line."""
    h, v = side_of_image(o, scene, "x", margin), side_of_image(o, scene, "y", margin)
    if h is None or v is None:
        return None
    return f"{v} {h}"


def count(scene: Scene, color: Optional[str] = None, shape: Optional[str] = None,
          size: Optional[str] = None) -> int:
    return sum(1 for o in scene.objects
               if (color is None or o.color == color) and (shape is None or o.shape == shape)
               and (size is None or o.size == size))


def categories(scene: Scene) -> List[str]:
    """The scene's object categories ('red square', ...), in object order (unique by design)."""
    return [o.name for o in scene.objects]


def unique_desc(scene: Scene, i: int, avoid: str) -> Optional[str]:
    """A unique noun phrase for object ``i`` that does not reveal attribute ``avoid``.

    avoid='color' -> 'square' or 'small square'; avoid='shape' -> 'red object'; None if impossible.
    """
    o = scene.objects[i]
    if avoid == "color":
        if count(scene, shape=o.shape) == 1:
            return o.shape
        if count(scene, shape=o.shape, size=o.size) == 1:
            return f"{o.size} {o.shape}"
        return None
    if avoid == "shape":
        if count(scene, color=o.color) == 1:
            return f"{o.color} object"
        return None
    raise ValueError(f"unknown attribute {avoid!r}; known: color, shape")


def reading_order(scene: Scene) -> List[Text]:
    """Texts sorted top-to-bottom, then left-to-right (by their centres)."""
    return sorted(scene.texts, key=lambda t: (t.cy2, t.cx2))


# ----------------------------------------------------------------------------- sampling


def _weighted(rng: random.Random, weights: Dict[str, float]) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[n] for n in names], k=1)[0]


def _text_string(rng: random.Random, kind: str) -> str:
    if kind == "word":
        return rng.choice(vocab.WORDS)
    if kind == "number":
        return str(rng.randint(1, 99))
    if kind == "digits":
        return "".join(rng.choice(vocab.DIGITS) for _ in range(rng.randint(3, 5)))
    if kind == "nonsense":
        return "".join(rng.choice(vocab.LETTERS) for _ in range(rng.randint(3, 4)))
    if kind == "expression":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if rng.random() < 0.5:
            return f"{a}+{b}="
        return f"{max(a, b)}-{min(a, b)}="
    raise ValueError(f"unknown text kind {kind!r}; known: word, number, digits, nonsense, expression")


def _free(rect: Rect, taken: Sequence[Rect], gap: int) -> bool:
    x, y, w, h = rect
    for tx, ty, tw, th in taken:
        if x < tx + tw + gap and tx < x + w + gap and y < ty + th + gap and ty < y + h + gap:
            return False
    return True


def _place(rng: random.Random, cfg: SceneConfig, w: int, h: int, taken: List[Rect]) -> Optional[Rect]:
    lo = cfg.margin
    hi_x, hi_y = cfg.width - cfg.margin - w, cfg.height - cfg.margin - h
    if hi_x < lo or hi_y < lo:
        return None
    for _ in range(cfg.max_tries):
        rect = (rng.randint(lo, hi_x), rng.randint(lo, hi_y), w, h)
        if _free(rect, taken, cfg.gap):
            return rect
    return None


def _trail_rect(x: int, y: int, w: int, direction: str, step: int) -> Rect:
    """Bounding box of an object plus its two trail copies (behind the motion)."""
    back = 2 * step
    if direction == "right":
        return (x - back, y, w + back, w)
    if direction == "left":
        return (x, y, w + back, w)
    if direction == "down":
        return (x, y - back, w, w + back)
    if direction == "up":
        return (x, y, w, w + back)
    raise ValueError(f"unknown direction {direction!r}; known: {vocab.DIRECTIONS}")


def _try_scene(rng: random.Random, cfg: SceneConfig, text_size) -> Optional[Scene]:
    background = rng.choice(sorted(vocab.BACKGROUNDS))
    fav_colors = rng.sample(sorted(vocab.COLORS), 2)
    fav_shapes = list(rng.choice(vocab.SHAPE_GROUPS))  # the scene's theme
    taken: List[Rect] = []

    texts: List[Text] = []
    n_texts = 0
    if rng.random() < cfg.text_prob:
        n_texts = 2 if rng.random() < cfg.second_text_prob else 1
    kinds = dict(cfg.text_kinds)
    for _ in range(n_texts):
        kind = _weighted(rng, kinds)
        used = {t.text for t in texts}
        used_colors = {t.color for t in texts}
        string = _text_string(rng, kind)
        color = rng.choice(sorted(set(vocab.COLORS) - used_colors))
        if string in used:
            return None
        w, h = text_size(string, cfg.text_scale)
        rect = _place(rng, cfg, w, h, taken)
        if rect is None:
            return None
        taken.append(rect)
        texts.append(Text(string, color, kind, rect[0], rect[1], w, h))

    n_obj = rng.randint(cfg.min_objects, cfg.max_objects)
    moving = rng.randrange(n_obj) if rng.random() < cfg.motion_prob else None
    direction = rng.choice(vocab.DIRECTIONS) if moving is not None else None
    objects: List[Obj] = []
    seen = set()
    for k in range(n_obj):
        for _ in range(cfg.max_tries):
            color = rng.choice(fav_colors) if rng.random() < cfg.favour_prob else _weighted(rng, vocab.COLOR_WEIGHTS)
            shape = rng.choice(fav_shapes) if rng.random() < cfg.favour_prob else _weighted(rng, vocab.SHAPE_WEIGHTS)
            if shape not in seen:  # each shape (category) at most once per scene
                break
        else:
            return None
        seen.add(shape)
        size = "small" if rng.random() < cfg.small_prob else "large"
        w = vocab.SIZES[size]
        if k == moving:
            full = _trail_rect(0, 0, w, direction, cfg.motion_step)
            rect = _place(rng, cfg, full[2], full[3], taken)
            if rect is None:
                return None
            # object position inside its trail box
            x = rect[0] + (rect[2] - w if direction == "right" else 0)
            y = rect[1] + (rect[3] - w if direction == "down" else 0)
        else:
            rect = _place(rng, cfg, w, w, taken)
            if rect is None:
                return None
            x, y = rect[0], rect[1]
        taken.append(rect)
        objects.append(Obj(shape, color, size, x, y, w))

    motion = Motion(moving, direction, cfg.motion_step) if moving is not None else None
    return Scene(cfg.width, cfg.height, background, cfg.noise, rng.getrandbits(32), cfg.text_scale,
                 tuple(objects), tuple(texts), motion)


def sample_scene(rng: random.Random, cfg: SceneConfig, min_texts: int = 0) -> Scene:
    """Draw a scene; retries until the layout fits and at least ``min_texts`` texts are present."""
    from llava_restore.playground.render import text_size

    if cfg.min_objects < 1 or cfg.max_objects < cfg.min_objects or cfg.max_objects > len(vocab.SHAPES):
        raise ValueError(f"bad object range [{cfg.min_objects}, {cfg.max_objects}] in SceneConfig "
                         f"(1 <= min <= max <= {len(vocab.SHAPES)}, one object per shape)")
    for _ in range(cfg.max_tries):
        scene = _try_scene(rng, cfg, text_size)
        if scene is not None and len(scene.texts) >= min_texts:
            return scene
    raise RuntimeError(f"could not lay out a scene with {cfg} in {cfg.max_tries} tries; "
                       "use fewer/smaller objects or texts")
