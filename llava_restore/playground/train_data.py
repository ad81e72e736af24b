"""Training conversations in LLaVA's llava_v1_5_mix665k.json format.

``train/llava_playground_train.json``: a list of {"id", "image" (relative to the data folder,
``images/train/pg<i>.png``),
"conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}.
Per training image:
- one multi-turn short-answer record (``train_qa_per_image`` turns), each question followed by
  LLaVA-1.5's "Answer the question using a single word or phrase."; text questions sometimes
  carry TextVQA's OCR-token line or OCRBench's bare lower-case phrasing, and some turns use MME's
  yes/no phrasings;
- with probability ``MC_PROB`` a multiple-choice record (MMBench/SEED style, 2-4 options,
  "Answer with the option's letter from the given choices directly.");
- with probability ``SQA_PROB`` a ScienceQA-style record (context + question + options);
- with probability ``CAPTION_PROB`` a one-sentence caption record.
A few text-only ScienceQA-style records (no "image" key, as in mix665k) are added too.
"""
from __future__ import annotations

import random
from typing import List, Optional, Tuple

from llava_restore.playground import config, vocab
from llava_restore.playground.benchmarks import mme, sqa
from llava_restore.playground.benchmarks.common import write_scenes
from llava_restore.playground.benchmarks.mmbench import HINT
from llava_restore.playground.benchmarks.textvqa import ocr_tokens
from llava_restore.playground.questions import (
    OPTION_COUNTS, QA, answer_text, ask, caption, distractor_pool, format_options, mc_options,
    sample_questions,
)
from llava_restore.playground.scene import Scene, sample_scene
from llava_restore.playground.sink import Sink, stream

TRAIN_JSON = "train/llava_playground_train.json"  # relative to the data folder
# Side file (not part of LLaVA's format): {record id: per turn, the boxes of the objects asked about},
# for the trainer's optional attention supervision.
GROUNDING_JSON = "train/llava_playground_train_grounding.json"
IMAGE_FOLDER = ""  # image paths in TRAIN_JSON are relative to the data folder itself
IMAGE_DIR = "images/train"

# Dominated by the single-object kinds of the GQA- and POPE-style sets; the other benchmarks' kinds
# (counting, reading, motion, relations) keep a small share so their formats are trained too.
SHORT_WEIGHTS = {
    "color_query": 2.0, "shape_query": 1.5, "size_choose": 1.0, "position_choose": 1.5,
    "exist_object": 2.5, "location": 0.3, "background": 0.2, "rel_choose": 0.2, "count": 0.3,
    "ocr_read": 0.5, "ocr_color": 0.15, "arithmetic": 0.2, "motion": 0.2,
}
MC_KINDS = ("color_query", "shape_query", "location", "rel_query", "count", "ocr_read",
            "background", "motion")
MME_PROB = 0.08  # probability that a short-answer turn is replaced by an MME-style yes/no turn
OCR_TOKENS_PROB = 0.4  # text questions with TextVQA's OCR-token line
OCRBENCH_PROB = 0.25  # read-the-text questions in OCRBench's bare phrasing
MC_PROB = 0.3
SQA_PROB = 0.12
CAPTION_PROB = 0.08
HINT_PROB = 0.2  # MC questions preceded by an MMBench-style hint line
TEXT_ONLY_PER_IMAGES = 100  # one text-only record per this many images


def _short_turn(qa: QA, scene: Scene, rng: random.Random) -> Tuple[str, str]:
    ans = answer_text(qa)
    if qa.kind == "ocr_read" and rng.random() < OCRBENCH_PROB:
        t = next(t for t in scene.texts if t.text == qa.answer)
        if len(scene.texts) > 1:
            return f"what is written in {t.color}?", ans
        if t.kind in ("number", "digits"):
            return "what is the number in the image?", ans
        return "what is written in the image?", ans
    if qa.kind in ("ocr_read", "ocr_color") and rng.random() < OCR_TOKENS_PROB:
        tokens = ", ".join(ocr_tokens(scene, rng))
        return f"{qa.question}\n{vocab.OCR_TOKEN_PREFIX}{tokens}\n{vocab.SHORT_ANSWER}", ans
    return f"{qa.question}\n{vocab.SHORT_ANSWER}", ans


def _mme_turn(scene: Scene, rng: random.Random) -> Optional[Tuple[str, str]]:
    task = rng.choice(mme.SUBTASKS)
    if task in ("OCR", "numerical_calculation"):  # these read the scene's only text
        if len(scene.texts) != 1 or (scene.texts[0].kind == "expression") != (task == "numerical_calculation"):
            return None
    pair = mme.MAKERS[task][0](scene, rng)
    if pair is None:
        return None
    i = rng.randrange(2)
    return f"{pair[i]}\n{vocab.SHORT_ANSWER}", ("Yes", "No")[i]


def _mc_turn(scene: Scene, rng: random.Random) -> Optional[Tuple[str, str, Tuple[int, ...]]]:
    qa = ask(scene, rng, rng.choice(MC_KINDS))
    if qa is None:
        return None
    opts, ans = mc_options(qa, rng, rng.choice(OPTION_COUNTS), distractor_pool(qa, scene, rng))
    question = qa.question
    if rng.random() < HINT_PROB:
        question = f"{HINT}\n{question}"
    return f"{question}\n{format_options(opts)}\n{vocab.MC_ANSWER}", vocab.OPTION_LETTERS[ans], qa.refs


def _conversation(turns: List[Tuple[str, str]], with_image: bool) -> List[dict]:
    conv = []
    for j, (q, a) in enumerate(turns):
        value = f"<image>\n{q}" if (j == 0 and with_image) else q
        conv += [{"from": "human", "value": value}, {"from": "gpt", "value": a}]
    return conv


Turn = Tuple[str, str, Tuple[int, ...]]  # question, answer, indices of the objects it is about


def image_records(i: int, scene: Scene, rng: random.Random, n_short: int) -> List[dict]:
    """The image's records; each carries ``refs`` (one tuple of object indices per turn) until
    ``build`` moves them to the grounding side file."""
    image = f"{IMAGE_DIR}/pg{i:06d}.png"
    recs: List[List[Turn]] = []
    turns: List[Turn] = []
    for qa in sample_questions(scene, rng, SHORT_WEIGHTS, n_short):
        turn = _mme_turn(scene, rng) if rng.random() < MME_PROB else None
        turns.append((*turn, ()) if turn else (*_short_turn(qa, scene, rng), qa.refs))
    turns = list({t[0]: t for t in turns}.values())  # distinct questions within a record
    if turns:
        recs.append(turns)
    if rng.random() < MC_PROB:
        mc = [t for t in (_mc_turn(scene, rng) for _ in range(rng.randint(1, 2))) if t is not None]
        if mc:
            recs.append(list({t[0]: t for t in mc}.values()))
    if rng.random() < SQA_PROB:
        made = rng.choice(sqa.IMAGE_MAKERS)(scene, rng)
        if made is not None:
            q, choices, ans, hint, _ = made
            body = sqa.human_value(q, choices, hint, has_image=False)
            recs.append([(f"{body}\n{vocab.MC_ANSWER}", vocab.OPTION_LETTERS[ans], ())])
    if rng.random() < CAPTION_PROB:
        recs.append([(vocab.CAPTION_PROMPT, caption(scene), ())])
    return [{"id": f"pg{i:06d}_{j}", "image": image,
             "conversations": _conversation([(q, a) for q, a, _ in t], True), "refs": [r for _, _, r in t]}
            for j, t in enumerate(recs)]


def grounding(rec: dict, scene: Scene) -> List[List[List[int]]]:
    """Per turn, the boxes [x, y, w, h] (pixels) of the objects the question is about ([] if none)."""
    return [[[scene.objects[k].x, scene.objects[k].y, scene.objects[k].w, scene.objects[k].w] for k in refs]
            for refs in rec["refs"]]


def n_images(sizes, seed: int) -> int:
    return sizes.train_images


def build(sink: Sink, seed: int, sizes) -> dict:
    records, scenes, boxes = [], [], {}
    n_qa = 0
    for i in range(sizes.train_images):
        rng = stream(seed, "train", i)
        scene = sample_scene(rng, config.TRAIN)
        sink.image(f"{IMAGE_DIR}/pg{i:06d}.png", scene, "train")
        scenes.append((f"{IMAGE_DIR}/pg{i:06d}.png", scene))
        recs = image_records(i, scene, rng, sizes.train_qa_per_image)
        for r in recs:
            boxes[r["id"]] = grounding(r, scene)
            del r["refs"]
        records += recs
        n_qa += sum(len(r["conversations"]) // 2 for r in recs)
        if (i + 1) % TEXT_ONLY_PER_IMAGES == 0:
            q, choices, ans, hint, _ = sqa._text_only(rng)
            body = sqa.human_value(q, choices, hint, has_image=False)
            records.append({"id": f"pg_text_{i:06d}",
                            "conversations": _conversation([(f"{body}\n{vocab.MC_ANSWER}",
                                                             vocab.OPTION_LETTERS[ans])], False)})
            n_qa += 1
    sink.json(TRAIN_JSON, records)
    sink.json(GROUNDING_JSON, boxes)
    write_scenes(sink, "train", scenes)
    return {"train_records": len(records), "train_qa": n_qa}
