"""SEED-Bench (image dimensions 1-6 and 9, video dimension 10 on a middle frame).

Files, as LLaVA's seed.sh and convert_seed_for_submission.py expect them:
- ``eval/seed_bench/llava-seed-bench.jsonl``: {image, text, category, question_id}; image
  questions have int ids, video questions "v<k>" strings (as in LLaVA's file); the text ends with
  the four options and LLaVA's multiple-choice line;
- ``eval/seed_bench/SEED-Bench.json``: {questions: [{answer, choice_a..choice_d, data_id,
  data_type, question, question_id (str), question_type_id}], question_type: {name: id}};
- ``eval/seed_bench/SEED-Bench-image/<data_id>`` and ``SEED-Bench-video-image/10_<k>.png`` (the
  middle frame of a "video": a moving object drawn with its motion trail).
"""
from __future__ import annotations

import random
from typing import Optional

from llava_restore.playground import config, vocab
from llava_restore.playground.benchmarks.common import EVAL, mc_prompt, redraw, write_scenes
from llava_restore.playground.questions import QA, ask, distractor_pool, mc_options
from llava_restore.playground.scene import Scene
from llava_restore.playground.sink import Sink, stream

ROOT = f"{EVAL}/seed_bench"
QUESTION_TYPES = {
    "Scene Understanding": 1, "Instance Identity": 2, "Instance Location": 3,
    "Instance Attributes": 4, "Instances Counting": 5, "Spatial Relation": 6,
    "Instance Interaction": 7, "Visual Reasoning": 8, "Text Understanding": 9,
    "Action Recognition": 10, "Action Prediction": 11, "Procedure Understanding": 12,
}
# image dimension -> question kinds (7 and 8 have no playground analogue)
IMAGE_DIMENSIONS = {
    "Scene Understanding": ("background",),
    "Instance Identity": ("identity",),
    "Instance Location": ("location",),
    "Instance Attributes": ("color_query", "shape_query"),
    "Instances Counting": ("count",),
    "Spatial Relation": ("rel_query",),
    "Text Understanding": ("ocr_read",),
}
IMAGE_QID_BASE = 100000
N_OPTIONS = 4


def _identity(scene: Scene, rng: random.Random) -> QA:
    o = rng.choice(scene.objects)
    present = {p.name for p in scene.objects}
    absent = tuple(f"{c} {s}" for c in sorted(vocab.COLORS) for s in vocab.SHAPES if f"{c} {s}" not in present)
    return QA("identity", "Which of these objects appears in the image?", o.name, "other", absent,
              "obj", "query")


def _ask(scene: Scene, rng: random.Random, dimension: str) -> Optional[QA]:
    kind = rng.choice(IMAGE_DIMENSIONS[dimension])
    return _identity(scene, rng) if kind == "identity" else ask(scene, rng, kind)


def n_images(sizes, seed: int) -> int:
    return sizes.seed_questions + sizes.seed_video_questions


def _record(qa: QA, scene: Scene, rng: random.Random):
    opts, ans = mc_options(qa, rng, N_OPTIONS, distractor_pool(qa, scene, rng))
    if len(opts) != N_OPTIONS:
        raise ValueError(f"SEED question {qa.question!r} got {len(opts)} options, needs {N_OPTIONS}")
    return opts, ans


def build(sink: Sink, seed: int, sizes) -> int:
    rows, questions, scenes = [], [], []
    dims = list(IMAGE_DIMENSIONS)
    for i in range(sizes.seed_questions):
        rng = stream(seed, "seed", "image", i)
        dim = dims[i % len(dims)]
        cfg = config.OCR_SINGLE if dim == "Text Understanding" else config.OBJECTS
        scene, qa = redraw(rng, cfg, lambda sc, r: _ask(sc, r, dim), f"SEED image question {i}",
                           min_texts=1 if dim == "Text Understanding" else 0)
        opts, ans = _record(qa, scene, rng)
        data_id = f"seed_{i:06d}.png"
        sink.image(f"{ROOT}/SEED-Bench-image/{data_id}", scene, "eval")
        scenes.append((f"SEED-Bench-image/{data_id}", scene))
        qid = IMAGE_QID_BASE + i
        rows.append({"image": f"SEED-Bench-image/{data_id}", "text": mc_prompt(qa.question, opts),
                     "category": dim, "question_id": qid})
        questions.append(_annotation(qa, opts, ans, data_id, "image", str(qid), QUESTION_TYPES[dim]))
    for k in range(sizes.seed_video_questions):
        rng = stream(seed, "seed", "video", k)
        scene, qa = redraw(rng, config.VIDEO, lambda sc, r: ask(sc, r, "motion"), f"SEED video question {k}")
        opts, ans = _record(qa, scene, rng)
        frame = f"SEED-Bench-video-image/10_{k:05d}.png"
        sink.image(f"{ROOT}/{frame}", scene, "eval")
        scenes.append((frame, scene))
        qid = f"v{k}"
        rows.append({"image": frame, "text": mc_prompt(qa.question, opts), "category": "Action Recognition",
                     "question_id": qid})
        questions.append(_annotation(qa, opts, ans, f"{k:05d}.webm", "video", qid, QUESTION_TYPES["Action Recognition"]))
    sink.jsonl(f"{ROOT}/llava-seed-bench.jsonl", rows)
    sink.json(f"{ROOT}/SEED-Bench.json", {"questions": questions, "question_type": QUESTION_TYPES})
    write_scenes(sink, "seed", scenes)
    return len(rows)


def _annotation(qa: QA, opts, ans: int, data_id: str, data_type: str, qid: str, type_id: int) -> dict:
    return {"answer": vocab.OPTION_LETTERS[ans], "choice_a": opts[0], "choice_b": opts[1],
            "choice_c": opts[2], "choice_d": opts[3], "data_id": data_id, "data_type": data_type,
            "question": qa.question, "question_id": qid, "question_type_id": type_id}
