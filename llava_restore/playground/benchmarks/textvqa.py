"""TextVQA (val v0.5.1 style, with LLaVA's OCR-token line).

Files, as LLaVA's textvqa.sh and eval_textvqa.py expect them:
- ``eval/textvqa/llava_textvqa_val_v051_ocr.jsonl``: {question_id (= the image id), image, text,
  category}; text = "<question>\\nReference OCR token: <t1>, <t2>, ...\\n<short-answer line>";
- ``eval/textvqa/TextVQA_0.5.1_val.json``: {dataset_type, dataset_name, dataset_version, data:
  [{question (lower case), image_id, image_classes, flickr_original_url, flickr_300k_url,
  image_width, image_height, answers (10), question_tokens, question_id (int), set_name}]};
- ``eval/textvqa/train_images/<image_id>.png``.
The scorer matches a result to its annotation by (image id, lower-cased question), so the
questions of one image are distinct. The OCR tokens are the rendered texts in reading order,
each with probability ``OCR_NOISE`` misread by one character, sometimes with a spurious token.
"""
from __future__ import annotations

import random
from typing import List

from llava_restore.playground import config, vocab
from llava_restore.playground.benchmarks.common import EVAL, write_scenes
from llava_restore.playground.benchmarks.mme import _near_miss
from llava_restore.playground.questions import QA, sample_questions
from llava_restore.playground.scene import Scene, reading_order, sample_scene
from llava_restore.playground.sink import Sink, stream

ROOT = f"{EVAL}/textvqa"
OCR_NOISE = 0.15  # probability that a token is misread
SPURIOUS_PROB = 0.1  # probability of one extra junk token
N_ANSWERS = 10
DISAGREE_PROB = 0.3  # probability that 1-2 of the 10 annotators gave another answer
QID_BASE = 34000
KIND_WEIGHTS = {"ocr_read": 3.0, "ocr_color": 1.0}


def ocr_tokens(scene: Scene, rng: random.Random) -> List[str]:
    tokens = [(_near_miss(t.text, rng) if rng.random() < OCR_NOISE else t.text) for t in reading_order(scene)]
    if rng.random() < SPURIOUS_PROB:
        junk = "".join(rng.choice(vocab.LETTERS) for _ in range(rng.randint(1, 2)))
        tokens.insert(rng.randrange(len(tokens) + 1), junk)
    return tokens


def annotator_answers(qa: QA, scene: Scene, rng: random.Random) -> List[str]:
    answers = [qa.answer.lower()] * N_ANSWERS
    if rng.random() < DISAGREE_PROB:
        others = [t.text.lower() for t in scene.texts if t.text.lower() != answers[0]]
        others += [c for c in vocab.COLORS if c != answers[0]] if qa.kind == "ocr_color" else []
        if not others:
            others = [_near_miss(qa.answer, rng).lower()]
        for j in rng.sample(range(N_ANSWERS), rng.randint(1, 2)):
            answers[j] = rng.choice(others)
    return answers


def n_images(sizes, seed: int) -> int:
    return sizes.textvqa_images


def build(sink: Sink, seed: int, sizes) -> int:
    rows, data, scenes = [], [], []
    for i in range(sizes.textvqa_images):
        rng = stream(seed, "textvqa", i)
        scene = sample_scene(rng, config.TEXT, min_texts=1)
        image_id = f"{rng.getrandbits(64):016x}"
        sink.image(f"{ROOT}/train_images/{image_id}.png", scene, "eval")
        scenes.append((f"{image_id}.png", scene))
        tokens = ", ".join(ocr_tokens(scene, rng))
        for qa in sample_questions(scene, rng, KIND_WEIGHTS, sizes.textvqa_per_image):
            text = f"{qa.question}\n{vocab.OCR_TOKEN_PREFIX}{tokens}\n{vocab.SHORT_ANSWER}"
            rows.append({"question_id": image_id, "image": f"{image_id}.png", "text": text,
                         "category": "default"})
            q = qa.question.lower()
            data.append({"question": q, "image_id": image_id,
                         "image_classes": sorted({o.shape.capitalize() for o in scene.objects}),
                         "flickr_original_url": "", "flickr_300k_url": "",
                         "image_width": scene.width, "image_height": scene.height,
                         "answers": annotator_answers(qa, scene, rng),
                         "question_tokens": q.rstrip("?").split(), "question_id": QID_BASE + len(data),
                         "set_name": "val"})
    sink.jsonl(f"{ROOT}/llava_textvqa_val_v051_ocr.jsonl", rows)
    sink.json(f"{ROOT}/TextVQA_0.5.1_val.json", {"dataset_type": "val", "dataset_name": "textvqa",
                                                 "dataset_version": "0.5.1", "data": data})
    write_scenes(sink, "textvqa", scenes)
    return len(rows)
