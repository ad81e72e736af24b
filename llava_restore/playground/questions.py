"""Question generators: each kind maps (scene, rng) to one ``QA`` (or None when the scene has no
unambiguous instance of that kind). Answers are derived from the scene geometry in ``scene.py``.

Answers are canonical lower case ("red", "2", "yes", "top left"), except read text, which keeps
its rendered case ("CAT"). ``choices`` is the closed answer set of the question's type (GQA's
"valid" answers, and the pool that multiple-choice distractors come from).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from llava_restore.playground import vocab
from llava_restore.playground.scene import (
    Scene, clear_on_axis, count, quadrant, reading_order, relation_holds, side_of_image, unique_desc,
)

YES_NO = ("yes", "no")
COUNTS = tuple(str(i) for i in range(0, 9))
PRESENT_COUNT_PROB = 0.8  # counting questions mostly ask about a colour/shape that is present


@dataclass(frozen=True)
class QA:
    kind: str
    question: str  # capitalised, ends with '?', no prompt suffix
    answer: str
    answer_type: str  # yes/no | number | other (VQAv2's answer types)
    choices: Tuple[str, ...]
    semantic: str  # GQA semantic type: attr | rel | obj | global | cat
    structural: str  # GQA structural type: query | verify | choose | logical | compare
    program: Tuple[Tuple[str, str, Tuple[int, ...]], ...] = ()  # GQA-style (operation, argument, deps)
    full_answer: str = ""
    refs: Tuple[int, ...] = ()  # indices of the objects the question is about


def _coin(rng: random.Random) -> bool:
    return rng.random() < 0.5


def _a(phrase: str) -> str:
    return f"{vocab.article(phrase)} {phrase}"


def _absent_category(scene: Scene, rng: random.Random, hard: bool) -> Tuple[str, str]:
    """A (colour, shape) not in the scene; ``hard`` prefers one sharing an attribute with a present one."""
    present = {(o.color, o.shape) for o in scene.objects}
    absent = [(c, s) for c in sorted(vocab.COLORS) for s in vocab.SHAPES if (c, s) not in present]
    if hard:
        colors = {o.color for o in scene.objects}
        shapes = {o.shape for o in scene.objects}
        near = [(c, s) for c, s in absent if c in colors or s in shapes]
        if near:
            return rng.choice(near)
    return rng.choice(absent)


# ----------------------------------------------------------------------------- attributes


def color_query(scene: Scene, rng: random.Random) -> Optional[QA]:
    cands = [(i, d) for i in range(len(scene.objects)) if (d := unique_desc(scene, i, "color"))]
    if not cands:
        return None
    i, desc = rng.choice(cands)
    o = scene.objects[i]
    prog = (("select", f"{o.shape} (o{i})", ()),) + (
        (("filter size", o.size, (0,)),) if desc.startswith(o.size) else ()
    )
    prog += (("query", "color", (len(prog) - 1,)),)
    return QA("color_query", f"What color is the {desc}?", o.color, "other", tuple(vocab.COLORS),
              "attr", "query", prog, f"The {desc} is {o.color}.", (i,))


def shape_query(scene: Scene, rng: random.Random) -> Optional[QA]:
    cands = [(i, d) for i in range(len(scene.objects)) if (d := unique_desc(scene, i, "shape"))]
    if not cands:
        return None
    i, desc = rng.choice(cands)
    o = scene.objects[i]
    prog = (("select", f"object (o{i})", ()), ("filter color", o.color, (0,)), ("query", "shape", (1,)))
    return QA("shape_query", f"What shape is the {desc}?", o.shape, "other", vocab.SHAPES,
              "attr", "query", prog, f"The {desc} is {_a(o.shape)}.", (i,))


def size_choose(scene: Scene, rng: random.Random) -> Optional[QA]:
    i = rng.randrange(len(scene.objects))
    o = scene.objects[i]
    a, b = ("small", "large") if _coin(rng) else ("large", "small")
    prog = (("select", f"{o.shape} (o{i})", ()), ("choose size", f"{a}|{b}", (0,)))
    return QA("size_choose", f"Is the {o.shape} {a} or {b}?", o.size, "other", tuple(vocab.SIZES),
              "attr", "choose", prog, f"The {o.shape} is {o.size}.", (i,))


def background_query(scene: Scene, rng: random.Random) -> Optional[QA]:
    return QA("background", "What color is the background?", scene.background, "other",
              tuple(vocab.BACKGROUNDS), "global", "query", (("query", "background", ()),),
              f"The background is {scene.background}.")


# ----------------------------------------------------------------------------- relations


def _rel_pairs(scene: Scene) -> List[Tuple[int, int, str]]:
    """(a, b, axis) for every ordered pair clearly apart on that axis."""
    n = len(scene.objects)
    return [(a, b, ax) for a in range(n) for b in range(n) if a != b for ax in ("x", "y")
            if clear_on_axis(scene.objects[a], scene.objects[b], ax)]


def rel_query(scene: Scene, rng: random.Random) -> Optional[QA]:
    """What color/shape is the object <rel> the B? Only when exactly one object is <rel> B and no
    other object is ambiguous (too close to B's centre line on that axis)."""
    objs = scene.objects
    cands = []
    for b in range(len(objs)):
        for rel, axis in vocab.AXIS_OF.items():
            others = [a for a in range(len(objs)) if a != b]
            hits = [a for a in others if relation_holds(objs[a], objs[b], rel)]
            unclear = [a for a in others if not clear_on_axis(objs[a], objs[b], axis)]
            if len(hits) == 1 and not unclear:
                cands.append((hits[0], b, rel))
    if not cands:
        return None
    a, b, rel = rng.choice(cands)
    attr = "color" if _coin(rng) else "shape"
    ans = getattr(objs[a], attr)
    phrase = vocab.RELATIONS[rel]
    prog = (("select", f"{objs[b].shape} (o{b})", ()), ("filter color", objs[b].color, (0,)),
            ("relate", f"_,{phrase},s (o{a})", (1,)), ("query", attr, (2,)))
    choices = tuple(vocab.COLORS) if attr == "color" else vocab.SHAPES
    return QA(f"rel_query_{attr}", f"What {attr} is the object {phrase} the {objs[b].shape}?", ans,
              "other", choices, "rel", "query", prog,
              f"The object {phrase} the {objs[b].shape} is {ans if attr == 'color' else _a(ans)}.", (a, b))


def rel_verify(scene: Scene, rng: random.Random) -> Optional[QA]:
    pairs = _rel_pairs(scene)
    if not pairs:
        return None
    a, b, axis = rng.choice(pairs)
    rels = [r for r, ax in vocab.AXIS_OF.items() if ax == axis]
    rel = rng.choice(rels)
    oa, ob = scene.objects[a], scene.objects[b]
    ans = "yes" if relation_holds(oa, ob, rel) else "no"
    phrase = vocab.RELATIONS[rel]
    prog = (("select", f"{ob.shape} (o{b})", ()), ("relate", f"_,{phrase},s (o{a})", (0,)),
            ("verify", f"{oa.shape}", (1,)))
    true_phrase = vocab.RELATIONS[rel if ans == "yes" else vocab.OPPOSITE[rel]]
    return QA("rel_verify", f"Is the {oa.shape} {phrase} the {ob.shape}?", ans, "yes/no", YES_NO,
              "rel", "verify", prog, f"{ans.capitalize()}, the {oa.shape} is {true_phrase} the {ob.shape}.",
              (a, b))


def rel_choose(scene: Scene, rng: random.Random) -> Optional[QA]:
    pairs = _rel_pairs(scene)
    if not pairs:
        return None
    a, b, axis = rng.choice(pairs)
    oa, ob = scene.objects[a], scene.objects[b]
    if axis == "x":
        ans = "left" if relation_holds(oa, ob, "left") else "right"
        opts = ["to the left", "to the right"]
        choices = ("left", "right")
    else:
        ans = "above" if relation_holds(oa, ob, "above") else "below"
        opts = ["above", "below"]
        choices = ("above", "below")
    if _coin(rng):
        opts.reverse()
    q = f"Is the {oa.shape} {opts[0]} or {opts[1]} of the {ob.shape}?"
    if axis == "y":
        q = f"Is the {oa.shape} {opts[0]} or {opts[1]} the {ob.shape}?"
    prog = (("select", f"{ob.shape} (o{b})", ()), ("choose rel", f"{oa.shape},{'|'.join(choices)},s", (0,)))
    return QA("rel_choose", q, ans, "other", choices, "rel", "choose", prog,
              f"The {oa.shape} is {vocab.RELATIONS[ans]} the {ob.shape}.", (a, b))


def position_choose(scene: Scene, rng: random.Random) -> Optional[QA]:
    cands = [(i, ax) for i, o in enumerate(scene.objects) for ax in ("x", "y")
             if side_of_image(o, scene, ax) is not None]
    if not cands:
        return None
    i, axis = rng.choice(cands)
    o = scene.objects[i]
    ans = side_of_image(o, scene, axis)
    if axis == "x":
        a, b = ("left", "right") if _coin(rng) else ("right", "left")
        q = f"Is the {o.shape} on the {a} or on the {b} of the image?"
        choices = ("left", "right")
    else:
        a, b = ("top", "bottom") if _coin(rng) else ("bottom", "top")
        q = f"Is the {o.shape} at the {a} or at the {b} of the image?"
        choices = ("top", "bottom")
    prog = (("select", f"{o.shape} (o{i})", ()), ("choose hposition" if axis == "x" else "choose vposition",
                                                   f"{a}|{b}", (0,)))
    return QA("position_choose", q, ans, "other", choices, "rel", "choose", prog,
              f"The {o.shape} is on the {ans} of the image.", (i,))


def location_query(scene: Scene, rng: random.Random) -> Optional[QA]:
    """Quadrant of an object (for multiple-choice benchmarks)."""
    cands = [i for i, o in enumerate(scene.objects) if quadrant(o, scene) is not None]
    if not cands:
        return None
    i = rng.choice(cands)
    o = scene.objects[i]
    ans = quadrant(o, scene)
    return QA("location", f"Where is the {o.shape} in the image?", ans, "other", vocab.QUADRANTS,
              "rel", "query", (("select", f"{o.shape} (o{i})", ()), ("query", "position", (0,))),
              f"The {o.shape} is in the {ans} of the image.", (i,))


# ----------------------------------------------------------------------------- existence / logic


def exist(scene: Scene, rng: random.Random) -> Optional[QA]:
    if _coin(rng):
        i = rng.randrange(len(scene.objects))
        color, shape = scene.objects[i].color, scene.objects[i].shape
        ans, refs = "yes", (i,)
    else:
        color, shape = _absent_category(scene, rng, hard=_coin(rng))
        ans, refs = "no", ()
    name = f"{color} {shape}"
    prog = (("select", shape, ()), ("filter color", color, (0,)), ("exist", "?", (1,)))
    return QA("exist", f"Is there {_a(name)} in the image?", ans, "yes/no", YES_NO, "obj", "verify",
              prog, f"{ans.capitalize()}, there is {'a' if ans == 'yes' else 'no'} {name}.", refs)


def absent_shapes(scene: Scene) -> List[str]:
    present = {o.shape for o in scene.objects}
    return [s for s in vocab.SHAPES if s not in present]


def exist_object(scene: Scene, rng: random.Random) -> Optional[QA]:
    """POPE's question over one category (a shape): half present, half absent; an absent shape is
    drawn from the scene's theme group half of the time (the adversarial kind of negative)."""
    if _coin(rng):
        i = rng.randrange(len(scene.objects))
        shape, ans, refs = scene.objects[i].shape, "yes", (i,)
    else:
        absent = absent_shapes(scene)
        present = {o.shape for o in scene.objects}
        themed = [s for s in absent if any(s in g and present & set(g) for g in vocab.SHAPE_GROUPS)]
        shape, ans, refs = rng.choice(themed if themed and _coin(rng) else absent), "no", ()
    prog = (("select", shape, ()), ("exist", "?", (0,)))
    return QA("exist_object", f"Is there {_a(shape)} in the image?", ans, "yes/no", YES_NO, "obj", "verify",
              prog, f"{ans.capitalize()}, there is {'a' if ans == 'yes' else 'no'} {shape}.", refs)


def exist_attr(scene: Scene, rng: random.Random) -> Optional[QA]:
    want = "yes" if _coin(rng) else "no"
    by_color = _coin(rng)
    pool = sorted(vocab.COLORS) if by_color else list(vocab.SHAPES)
    have = [v for v in pool if count(scene, **({"color": v} if by_color else {"shape": v})) > 0]
    pick = [v for v in pool if (v in have) == (want == "yes")]
    if not pick:
        return None
    v = rng.choice(pick)
    if by_color:
        q, noun = f"Are there any {v} objects?", f"{v} objects"
        prog = (("select", "object", ()), ("filter color", v, (0,)), ("exist", "?", (1,)))
    else:
        q, noun = f"Are there any {vocab.PLURALS[v]}?", vocab.PLURALS[v]
        prog = (("select", v, ()), ("exist", "?", (0,)))
    return QA("exist_attr", q, want, "yes/no", YES_NO, "obj", "verify", prog,
              f"{want.capitalize()}, there are {'' if want == 'yes' else 'no '}{noun}.")


def logical(scene: Scene, rng: random.Random) -> Optional[QA]:
    op = "and" if _coin(rng) else "or"
    want = "yes" if _coin(rng) else "no"
    present = [o.name for o in scene.objects]
    # number of present categories among the two, per (op, answer)
    n_present = {("and", "yes"): 2, ("and", "no"): rng.choice((0, 1)),
                 ("or", "yes"): rng.choice((1, 2)), ("or", "no"): 0}[(op, want)]
    if n_present > len(present):
        return None
    names = rng.sample(present, n_present)
    while len(names) < 2:
        c, s = _absent_category(scene, rng, hard=True)
        if f"{c} {s}" not in names:
            names.append(f"{c} {s}")
    rng.shuffle(names)
    x, y = names
    q = (f"Is there both {_a(x)} and {_a(y)} in the image?" if op == "and"
         else f"Is there {_a(x)} or {_a(y)} in the image?")
    prog = (("select", x, ()), ("exist", "?", (0,)), ("select", y, ()), ("exist", "?", (2,)),
            (op, "", (1, 3)))
    return QA(f"logical_{op}", q, want, "yes/no", YES_NO, "obj", "logical", prog,
              f"{want.capitalize()}.")


def compare_color(scene: Scene, rng: random.Random) -> Optional[QA]:
    uniq = [i for i, o in enumerate(scene.objects) if count(scene, shape=o.shape) == 1]
    pairs = [(a, b) for a in uniq for b in uniq if a < b]
    if not pairs:
        return None
    want = "yes" if _coin(rng) else "no"
    same = [(a, b) for a, b in pairs if scene.objects[a].color == scene.objects[b].color]
    pool = same if want == "yes" and same else pairs
    a, b = rng.choice(pool)
    if rng.random() < 0.5:
        a, b = b, a
    oa, ob = scene.objects[a], scene.objects[b]
    ans = "yes" if oa.color == ob.color else "no"
    prog = (("select", f"{oa.shape} (o{a})", ()), ("select", f"{ob.shape} (o{b})", ()),
            ("same color", "", (0, 1)))
    return QA("compare_color", f"Do the {oa.shape} and the {ob.shape} have the same color?", ans,
              "yes/no", YES_NO, "attr", "compare", prog,
              f"{ans.capitalize()}, the {oa.shape} is {oa.color} and the {ob.shape} is {ob.color}.", (a, b))


def compare_size(scene: Scene, rng: random.Random) -> Optional[QA]:
    n = len(scene.objects)
    if n < 2:
        return None
    a, b = rng.sample(range(n), 2)
    oa, ob = scene.objects[a], scene.objects[b]
    ans = "yes" if oa.size == ob.size else "no"
    prog = (("select", f"{oa.shape} (o{a})", ()), ("select", f"{ob.shape} (o{b})", ()),
            ("same size", "", (0, 1)))
    return QA("compare_size", f"Are the {oa.shape} and the {ob.shape} the same size?", ans, "yes/no",
              YES_NO, "attr", "compare", prog,
              f"{ans.capitalize()}, the {oa.shape} is {oa.size} and the {ob.shape} is {ob.size}.", (a, b))


# ----------------------------------------------------------------------------- counting


def count_query(scene: Scene, rng: random.Random) -> Optional[QA]:
    mode = rng.choice(("shape", "color", "all", "size"))
    if mode == "shape":
        present = sorted({o.shape for o in scene.objects})
        v = rng.choice(present) if rng.random() < PRESENT_COUNT_PROB else rng.choice(vocab.SHAPES)
        n, q = count(scene, shape=v), f"How many {vocab.PLURALS[v]} are there?"
    elif mode == "color":
        present = sorted({o.color for o in scene.objects})
        v = rng.choice(present) if rng.random() < PRESENT_COUNT_PROB else rng.choice(sorted(vocab.COLORS))
        n, q = count(scene, color=v), f"How many {v} objects are there?"
    elif mode == "size":
        v = rng.choice(tuple(vocab.SIZES))
        n, q = count(scene, size=v), f"How many {v} objects are there?"
    else:
        n, q = len(scene.objects), "How many objects are there?"
    return QA("count", q, str(n), "number", COUNTS, "obj", "query", (("select", mode, ()), ("count", "", (0,))),
              f"There {'is' if n == 1 else 'are'} {n}.")


# ----------------------------------------------------------------------------- text


def _text_choices(scene: Scene) -> Tuple[str, ...]:
    return tuple(t.text for t in scene.texts)


def ocr_read(scene: Scene, rng: random.Random) -> Optional[QA]:
    readable = [t for t in scene.texts if t.kind != "expression"]
    if not readable:
        return None
    if len(scene.texts) == 1:
        (t,) = readable
        q = "What number is written in the image?" if t.kind in ("number", "digits") else "What is written in the image?"
    else:
        t = rng.choice(readable)
        q = f"What is written in {t.color}?"
    return QA("ocr_read", q, t.text, "other", _text_choices(scene), "attr", "query",
              (("select", "text", ()), ("query", "text", (0,))), f"The text says {t.text}.")


def ocr_color(scene: Scene, rng: random.Random) -> Optional[QA]:
    readable = [t for t in scene.texts if t.kind != "expression"]
    if not readable:
        return None
    t = rng.choice(readable)
    return QA("ocr_color", f"What color is the text {t.text}?", t.color, "other", tuple(vocab.COLORS),
              "attr", "query", (("select", f"text {t.text}", ()), ("query", "color", (0,))),
              f"The text {t.text} is {t.color}.")


def expression_value(text: str) -> int:
    """Value of a rendered expression such as '3+4=' or '9-2='."""
    body = text.rstrip("=")
    for op in "+-":
        if op in body:
            a, b = body.split(op)
            return int(a) + int(b) if op == "+" else int(a) - int(b)
    raise ValueError(f"not an expression: {text!r}")


def arithmetic(scene: Scene, rng: random.Random) -> Optional[QA]:
    exprs = [t for t in scene.texts if t.kind == "expression"]
    if len(exprs) != 1:  # "the arithmetic question" must name one text
        return None
    (t,) = exprs
    v = str(expression_value(t.text))
    return QA("arithmetic", "What is the answer to the arithmetic question in the image?", v, "number",
              tuple(str(i) for i in range(0, 19)), "attr", "query",
              (("select", "text", ()), ("compute", t.text, (0,))), f"The answer is {v}.")


def motion_query(scene: Scene, rng: random.Random) -> Optional[QA]:
    if scene.motion is None:
        return None
    o = scene.objects[scene.motion.index]
    d = scene.motion.direction
    return QA("motion", f"In which direction is the {o.shape} moving?", d, "other", vocab.DIRECTIONS,
              "rel", "query", (("select", f"{o.shape} (o{scene.motion.index})", ()), ("query", "motion", (0,))),
              f"The {o.shape} is moving {d}.", (scene.motion.index,))


def caption(scene: Scene) -> str:
    """A one-sentence description of the scene (training only)."""
    parts = [f"{_a(o.size + ' ' + o.name)}" for o in sorted(scene.objects, key=lambda o: (o.cy2, o.cx2))]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    s = f"There {'is' if len(parts) == 1 else 'are'} {listed} on a {scene.background} background."
    for t in reading_order(scene):
        s += f" The text {t.text} is written in {t.color}."
    if scene.motion is not None:
        o = scene.objects[scene.motion.index]
        s += f" The {o.name} is moving {scene.motion.direction}."
    return s


KINDS: Dict[str, Callable[[Scene, random.Random], Optional[QA]]] = {
    "color_query": color_query,
    "shape_query": shape_query,
    "size_choose": size_choose,
    "background": background_query,
    "rel_query": rel_query,
    "rel_verify": rel_verify,
    "rel_choose": rel_choose,
    "position_choose": position_choose,
    "location": location_query,
    "exist": exist,
    "exist_object": exist_object,
    "exist_attr": exist_attr,
    "logical": logical,
    "compare_color": compare_color,
    "compare_size": compare_size,
    "count": count_query,
    "ocr_read": ocr_read,
    "ocr_color": ocr_color,
    "arithmetic": arithmetic,
    "motion": motion_query,
}


def ask(scene: Scene, rng: random.Random, kind: str) -> Optional[QA]:
    if kind not in KINDS:
        raise KeyError(f"unknown question kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind](scene, rng)


def sample_questions(scene: Scene, rng: random.Random, weights: Dict[str, float], n: int,
                     max_tries: int = 60) -> List[QA]:
    """Up to ``n`` questions with distinct texts, kinds drawn by ``weights``."""
    kinds = sorted(weights)
    out: List[QA] = []
    seen = set()
    for _ in range(max_tries):
        if len(out) >= n:
            break
        kind = rng.choices(kinds, weights=[weights[k] for k in kinds], k=1)[0]
        qa = ask(scene, rng, kind)
        if qa is not None and qa.question not in seen:
            seen.add(qa.question)
            out.append(qa)
    return out


def answer_text(qa: QA) -> str:
    """The answer as the assistant says it: first letter capitalised (read text kept as rendered)."""
    if qa.kind == "ocr_read":
        return qa.answer
    return qa.answer[:1].upper() + qa.answer[1:]


# ----------------------------------------------------------------------------- multiple choice


def mc_options(qa: QA, rng: random.Random, n_options: int, pool: Sequence[str] = ()) -> Tuple[List[str], int]:
    """Options (the answer plus distractors from ``qa.choices`` or ``pool``), shuffled; returns
    (options, index of the answer)."""
    source = [c for c in (pool or qa.choices) if c != qa.answer]
    source = list(dict.fromkeys(source))
    k = min(n_options - 1, len(source))
    if k < 1:
        raise ValueError(f"question {qa.question!r} has no distractors for a multiple-choice form")
    opts = rng.sample(source, k) + [qa.answer]
    rng.shuffle(opts)
    return opts, opts.index(qa.answer)


def distractor_pool(qa: QA, scene: Scene, rng: random.Random) -> Tuple[str, ...]:
    """Answers of the same type as ``qa.answer`` to draw multiple-choice distractors from."""
    if qa.kind == "ocr_read":
        others = [t.text for t in scene.texts if t.text != qa.answer]
        if qa.answer.isdigit():
            n = len(qa.answer)
            lo = 1 if n == 1 else 10 ** (n - 1)
            return tuple(dict.fromkeys(others + [str(rng.randint(lo, 10 ** n - 1)) for _ in range(6)]))
        return tuple(dict.fromkeys(others + rng.sample(vocab.WORDS, 4)))
    if qa.kind == "count":
        n = int(qa.answer)
        return tuple(str(v) for v in range(max(0, n - 3), n + 4))
    if qa.kind == "background":
        return tuple(vocab.BACKGROUNDS) + ("white",)
    return qa.choices


OPTION_COUNTS = (2, 3, 4, 4)  # number of options of a free multiple-choice question (drawn uniformly)


def format_options(options: Sequence[str]) -> str:
    return "\n".join(f"{vocab.OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options))
