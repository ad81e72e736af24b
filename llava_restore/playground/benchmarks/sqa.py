"""ScienceQA (test split, CQM-A prompts as in LLaVA's llava_test_CQM-A.json).

Files, as LLaVA's sqa.sh, model_vqa_science and eval_science_qa.py expect them:
- ``eval/scienceqa/llava_test_CQM-A.json``: [{id, image?: "<id>/image.png", conversations:
  [{from: human, value: "<image>\\nContext: ...\\n<question>\\nA. ...\\nB. ..."}, {from: gpt, value: letter}]}]
- ``eval/scienceqa/problems.json``: {id: {question, choices, answer (index), hint, image, task,
  grade, subject, topic, category, skill, lecture, solution, split}}
- ``eval/scienceqa/pid_splits.json``: {train, val, test, trainval, minitrain, minival, minitest}
- ``eval/scienceqa/images/test/<id>/image.png``
Questions with an image combine the picture with the context (a rule); some have no image
(ScienceQA reports the IMG subset separately).
"""
from __future__ import annotations

import random
from typing import Optional, Tuple

from llava_restore.playground import config, vocab
from llava_restore.playground.benchmarks.common import EVAL, redraw, write_scenes
from llava_restore.playground.questions import format_options
from llava_restore.playground.scene import Scene, count
from llava_restore.playground.sink import Sink, stream

ROOT = f"{EVAL}/scienceqa"
TEXT_ONLY_PROB = 0.25

# (question, choices, answer index, hint, meta) -> meta = (topic, category, skill)
Problem = Tuple[str, list, int, str, Tuple[str, str, str]]


def _warm_cool(scene: Scene, rng: random.Random) -> Optional[Problem]:
    cands = [o for o in scene.objects if count(scene, shape=o.shape) == 1 and o.color != "white"]
    if not cands:
        return None
    o = rng.choice(cands)
    ans = "warm" if o.color in vocab.WARM_COLORS else "cool"
    choices = ["warm", "cool"] if rng.random() < 0.5 else ["cool", "warm"]
    return (f"Is the {o.shape} in the picture a warm color or a cool color?", choices, choices.index(ans),
            vocab.SQA_WARM_CONTEXT, ("colors", "Identify warm and cool colors", "Warm and cool colors"))


def _sides(scene: Scene, rng: random.Random) -> Optional[Problem]:
    cands = [o for o in scene.objects if count(scene, color=o.color) == 1]
    if not cands:
        return None
    o = rng.choice(cands)
    ans = str(vocab.SHAPE_SIDES[o.shape])
    values = sorted({str(v) for v in vocab.SHAPE_SIDES.values()}, key=int)
    choices = rng.sample([v for v in values if v != ans], rng.choice((2, 3))) + [ans]
    rng.shuffle(choices)
    return (f"How many straight sides does the {o.color} object have?", choices, choices.index(ans),
            vocab.SQA_SIDES_CONTEXT, ("geometry", "Count the sides of shapes", "Sides of shapes"))


def _which_present(scene: Scene, rng: random.Random) -> Optional[Problem]:
    o = rng.choice(scene.objects)
    present = {p.name for p in scene.objects}
    absent = [f"{c} {s}" for c in sorted(vocab.COLORS) for s in vocab.SHAPES if f"{c} {s}" not in present]
    choices = rng.sample(absent, rng.choice((1, 2, 3))) + [o.name]
    rng.shuffle(choices)
    return ("Which of these objects is in the picture?", choices, choices.index(o.name), "",
            ("shapes", "Identify objects", "Objects in a picture"))


def _text_only(rng: random.Random) -> Problem:
    if rng.random() < 0.5:
        ans = rng.choice(vocab.WARM_COLORS)
        choices = rng.sample(vocab.COOL_COLORS, rng.choice((1, 2, 3))) + [ans]
        q, hint, meta = ("Which of these colors is a warm color?", vocab.SQA_WARM_CONTEXT,
                         ("colors", "Identify warm and cool colors", "Warm and cool colors"))
    else:
        ans = "triangle"
        others = [s for s in vocab.SHAPES if vocab.SHAPE_SIDES[s] != 3]
        choices = rng.sample(others, rng.choice((1, 2, 3))) + [ans]
        q, hint, meta = ("Which shape has exactly 3 straight sides?", vocab.SQA_SIDES_CONTEXT,
                         ("geometry", "Count the sides of shapes", "Sides of shapes"))
    rng.shuffle(choices)
    return q, choices, choices.index(ans), hint, meta


IMAGE_MAKERS = (_warm_cool, _sides, _which_present)


def human_value(question: str, choices, hint: str, has_image: bool) -> str:
    body = (f"Context: {hint}\n" if hint else "") + f"{question}\n{format_options(choices)}"
    return ("<image>\n" + body) if has_image else body


def _is_text_only(rng: random.Random) -> bool:
    return rng.random() < TEXT_ONLY_PROB  # the first draw of each question's stream


def n_images(sizes, seed: int) -> int:
    return sum(not _is_text_only(stream(seed, "sqa", i)) for i in range(sizes.sqa_questions))


def build(sink: Sink, seed: int, sizes) -> int:
    records, problems, ids, scenes = [], {}, [], []
    for i in range(sizes.sqa_questions):
        pid = str(i + 1)
        rng = stream(seed, "sqa", i)
        scene = None
        if _is_text_only(rng):
            q, choices, ans, hint, meta = _text_only(rng)
        else:
            scene, made = redraw(rng, config.OBJECTS, lambda sc, r: r.choice(IMAGE_MAKERS)(sc, r),
                                 f"ScienceQA question {pid}")
            q, choices, ans, hint, meta = made
            sink.image(f"{ROOT}/images/test/{pid}/image.png", scene, "eval")
            scenes.append((f"{pid}/image.png", scene))
        record = {"id": pid}
        if scene is not None:
            record["image"] = f"{pid}/image.png"
        record["conversations"] = [
            {"from": "human", "value": human_value(q, choices, hint, scene is not None)},
            {"from": "gpt", "value": vocab.OPTION_LETTERS[ans]},
        ]
        records.append(record)
        topic, category, skill = meta
        problems[pid] = {"question": q, "choices": choices, "answer": ans, "hint": hint,
                         "image": "image.png" if scene is not None else None, "task": "closed choice",
                         "grade": "grade3", "subject": "natural science", "topic": topic,
                         "category": category, "skill": skill, "lecture": "", "solution": "",
                         "split": "test"}
        ids.append(pid)
    sink.json(f"{ROOT}/llava_test_CQM-A.json", records, indent=2)
    sink.json(f"{ROOT}/problems.json", problems)
    splits = {"train": [], "val": [], "test": ids, "trainval": [], "minitrain": [], "minival": [],
              "minitest": ids[: max(1, len(ids) // 10)] if ids else []}
    sink.json(f"{ROOT}/pid_splits.json", splits, indent=2)
    write_scenes(sink, "sqa", scenes)
    return len(records)
