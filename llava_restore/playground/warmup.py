"""A stage-2 warm-up for the playground trainer: single-turn questions that each need one object
picked out of the image, generated from the training scenes (``warmup_steps``).

The from-scratch decoder learns to *select* the object a question names only slowly inside the
full question mix (playground/README.md). On these questions alone, with the hop-1 aid
(``aux_weight``), selection forms within a few hundred steps; the full mix then builds on it.

Kinds (one per record, LLaVA conversation format, LLaVA-1.5's short-answer suffix):
- "What color is the <shape>?" / "What shape is the <colour> object?" about an object whose shape
  (colour) is unique in its image;
- "Is there a <colour> <shape> in the image?", half of them about a present object (Yes) and half
  about an absent pair (No), preferring a colour and a shape that both occur in the image but not
  together (POPE's adversarial kind).
"""
from __future__ import annotations

import random
from typing import Dict, List

from llava_restore.playground import vocab

SUFFIX = "\nAnswer the question using a single word or phrase."


def _select(objs: list, rng: random.Random) -> tuple | None:
    asks = []
    for o in objs:
        if sum(p["shape"] == o["shape"] for p in objs) == 1:
            asks.append((f"What color is the {o['shape']}?", o["color"]))
        if sum(p["color"] == o["color"] for p in objs) == 1:
            asks.append((f"What shape is the {o['color']} object?", o["shape"]))
    return rng.choice(asks) if asks else None


def _exists(objs: list, rng: random.Random) -> tuple:
    present = {(o["color"], o["shape"]) for o in objs}
    if rng.random() < 0.5:
        c, s = rng.choice(sorted(present))
        return f"Is there a {c} {s} in the image?", "yes"
    near = [(c, s) for c in sorted({o["color"] for o in objs}) for s in sorted({o["shape"] for o in objs})
            if (c, s) not in present]
    pool = near or [(c, s) for c in vocab.COLORS for s in vocab.SHAPES if (c, s) not in present]
    c, s = rng.choice(pool)
    return f"Is there a {c} {s} in the image?", "no"


def warmup_records(scenes: Dict[str, dict], seed: int = 0, per_image: int = 2) -> List[dict]:
    """``per_image`` single-turn records per image with at least one object, alternating select and
    existence questions; deterministic given ``seed`` and the scenes' order."""
    rng = random.Random(seed)
    out = []
    for image, scene in scenes.items():
        objs = scene.get("objects") or []
        if not objs:
            continue
        for k in range(per_image):
            qa = _select(objs, rng) if k % 2 == 0 else None
            q, a = qa if qa is not None else _exists(objs, rng)
            out.append({"id": f"warmup-{len(out)}", "image": image,
                        "conversations": [{"from": "human", "value": "<image>\n" + q + SUFFIX},
                                          {"from": "gpt", "value": a.capitalize()}]})
    return out
