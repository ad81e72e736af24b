"""MME: per image two yes/no questions (one Yes, one No), scored with acc and acc+.

Subtasks: perception ``existence``, ``count``, ``position``, ``color``, ``OCR``; cognition
``numerical_calculation``. The other eight MME subtasks (posters, celebrity, scene, landmark,
artwork, commonsense_reasoning, text_translation, code_reasoning) have no playground analogue.

Files, as LLaVA's mme.sh, convert_answer_to_mme.py and MME's eval_tool expect them:
- ``eval/MME/llava_mme.jsonl``: {question_id: "<subtask>/<name>.png", image (same), text, category};
  the text is the MME question without " Please answer yes or no." plus LLaVA's short-answer line;
- ``eval/MME/MME_Benchmark_release_version/<subtask>/<name>.png`` and ``<name>.txt`` (flat layout,
  like MME's perception subtasks): lines "<question> Please answer yes or no.\\t<Yes|No>";
- ``eval/MME/eval_tool/Your_Results/<subtask>.txt``: "<name>.png\\t<question>\\t<Yes|No>" (the
  template the MME eval tool asks you to fill with a fourth column, the model's answer).
"""
from __future__ import annotations

import random
from typing import Optional, Tuple

from llava_restore.playground import config, vocab
from llava_restore.playground.benchmarks.common import EVAL, redraw, short_prompt, write_scenes
from llava_restore.playground.questions import _absent_category, expression_value
from llava_restore.playground.scene import Scene, clear_on_axis, count, relation_holds
from llava_restore.playground.sink import Sink, stream

ROOT = f"{EVAL}/MME"
RELEASE = f"{ROOT}/MME_Benchmark_release_version"
SUBTASKS = ("existence", "count", "position", "color", "OCR", "numerical_calculation")

Pair = Tuple[str, str]  # (question answered Yes, question answered No)


def _existence(scene: Scene, rng: random.Random) -> Optional[Pair]:
    o = rng.choice(scene.objects)
    c, s = _absent_category(scene, rng, hard=True)
    return (f"Is there {vocab.article(o.color)} {o.name} in this image?",
            f"Is there {vocab.article(c)} {c} {s} in this image?")


def _count_phrase(n: int, shape: str) -> str:
    if n == 1:
        return f"Is there only one {shape} in the image?"
    return f"Are there a total of {vocab.NUMBER_WORDS[n]} {vocab.PLURALS[shape]} in the image?"


def _count(scene: Scene, rng: random.Random) -> Optional[Pair]:
    shape = rng.choice(sorted({o.shape for o in scene.objects}))
    n = count(scene, shape=shape)
    wrong = rng.choice([m for m in (n - 1, n + 1, n + 2) if m >= 1 and m != n])
    return _count_phrase(n, shape), _count_phrase(wrong, shape)


def _position(scene: Scene, rng: random.Random) -> Optional[Pair]:
    objs = scene.objects
    pairs = [(a, b, ax) for a in range(len(objs)) for b in range(len(objs)) if a != b
             for ax in ("x", "y") if clear_on_axis(objs[a], objs[b], ax)]
    if not pairs:
        return None
    a, b, axis = rng.choice(pairs)
    rels = ("left", "right") if axis == "x" else ("above", "below")
    true = next(r for r in rels if relation_holds(objs[a], objs[b], r))
    false = vocab.OPPOSITE[true]
    phrase = {"left": "on the left of", "right": "on the right of", "above": "above", "below": "below"}
    return (f"Is the {objs[a].name} {phrase[true]} the {objs[b].name}?",
            f"Is the {objs[a].name} {phrase[false]} the {objs[b].name}?")


def _color(scene: Scene, rng: random.Random) -> Optional[Pair]:
    uniq = [o for o in scene.objects if count(scene, shape=o.shape) == 1]
    if not uniq:
        return None
    o = rng.choice(uniq)
    other = rng.choice([c for c in sorted(vocab.COLORS) if c != o.color])
    return f"Is the {o.shape} in the image {o.color}?", f"Is the {o.shape} in the image {other}?"


def _near_miss(text: str, rng: random.Random) -> str:
    """``text`` with one character replaced by another of the same class."""
    i = rng.randrange(len(text))
    pool = vocab.DIGITS if text[i].isdigit() else vocab.LETTERS
    return text[:i] + rng.choice([ch for ch in pool if ch != text[i]]) + text[i + 1:]


def _ocr(scene: Scene, rng: random.Random) -> Optional[Pair]:
    if len(scene.texts) != 1 or scene.texts[0].kind == "expression":
        return None  # "the word in the image" must name one text
    (t,) = scene.texts
    what = "number" if t.kind in ("number", "digits") else "word"
    return (f'Is the {what} in the image "{t.text}"?',
            f'Is the {what} in the image "{_near_miss(t.text, rng)}"?')


def _numerical(scene: Scene, rng: random.Random) -> Optional[Pair]:
    if len(scene.texts) != 1 or scene.texts[0].kind != "expression":
        return None
    (t,) = scene.texts
    v = expression_value(t.text)
    wrong = rng.choice([w for w in (v - 2, v - 1, v + 1, v + 2, v + 10) if w >= 0])
    q = "Is the answer to the arithmetic question in the image {}?"
    return q.format(v), q.format(wrong)


MAKERS = {"existence": (_existence, config.OBJECTS), "count": (_count, config.OBJECTS),
          "position": (_position, config.OBJECTS), "color": (_color, config.OBJECTS),
          "OCR": (_ocr, config.OCR_SINGLE), "numerical_calculation": (_numerical, config.EXPRESSION)}


def n_images(sizes, seed: int) -> int:
    return sizes.mme_images * len(SUBTASKS)


def build(sink: Sink, seed: int, sizes) -> int:
    rows, scenes = [], []
    for task in SUBTASKS:
        make, cfg = MAKERS[task]
        needs_text = task in ("OCR", "numerical_calculation")
        results = []
        for i in range(sizes.mme_images):
            rng = stream(seed, "mme", task, i)
            scene, pair = redraw(rng, cfg, make, f"MME {task} image {i}", min_texts=1 if needs_text else 0)
            name = f"{i + 1:04d}"
            image = f"{task}/{name}.png"
            sink.image(f"{RELEASE}/{image}", scene, "eval")
            scenes.append((image, scene))
            gt = "".join(f"{q} {vocab.MME_SUFFIX}\t{a}\n" for q, a in zip(pair, ("Yes", "No")))
            sink.text(f"{RELEASE}/{task}/{name}.txt", gt)
            for q, a in zip(pair, ("Yes", "No")):
                rows.append({"question_id": image, "image": image, "text": short_prompt(q), "category": task})
                results.append(f"{name}.png\t{q} {vocab.MME_SUFFIX}\t{a}\n")
        sink.text(f"{ROOT}/eval_tool/Your_Results/{task}.txt", "".join(results))
    sink.jsonl(f"{ROOT}/llava_mme.jsonl", rows)
    write_scenes(sink, "mme", scenes)
    return len(rows)
