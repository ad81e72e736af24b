"""VQAv2 (test-dev2015 style, plus a local val-style annotation for local scoring).

Files, as LLaVA's vqav2.sh and convert_vqav2_for_submission.py expect them:
- ``eval/vqav2/llava_vqav2_mscoco_test-dev2015.jsonl``: {question_id (int), image, text, category};
- ``eval/vqav2/llava_vqav2_mscoco_test2015.jsonl``: the full "test" split, a superset (the
  submission lists every one of its questions, unanswered ones with an empty answer);
- ``eval/vqav2/test2015/COCO_test2015_<12 digits>.png``;
- ``eval/vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json`` and
  ``eval/vqav2/v2_mscoco_test-dev2015_annotations.json``: the official VQA question/annotation
  formats (10 answers per question), which the real test-dev does not publish.
Question ids are image_id * 1000 + k, as in VQAv2.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import List

from llava_restore.playground import config
from llava_restore.playground.benchmarks.common import EVAL, short_prompt, write_scenes
from llava_restore.playground.questions import QA, sample_questions
from llava_restore.playground.scene import sample_scene
from llava_restore.playground.sink import Sink, stream

ROOT = f"{EVAL}/vqav2"
KIND_WEIGHTS = {
    "exist": 2.0, "count": 2.0, "color_query": 2.0, "shape_query": 1.0, "rel_verify": 1.0,
    "rel_query": 1.0, "size_choose": 0.5, "ocr_read": 1.0, "background": 0.3,
}
N_ANSWERS = 10
DISAGREE_PROB = 0.3
INFO = {"description": "llava-restore playground (synthetic, VQAv2 format)", "version": "2.0"}
LICENSE = {"name": "synthetic data, no license restrictions", "url": ""}
QUESTION_TYPE_PREFIXES = ("what color is the", "what shape is the", "what is written in",
                          "what number is", "how many", "is there a", "is there an", "is the",
                          "are the", "what is")


def question_type(question: str) -> str:
    q = question.lower()
    for p in QUESTION_TYPE_PREFIXES:
        if q.startswith(p):
            return p
    return "none of the above"


def _alternative(qa: QA, rng: random.Random) -> str:
    if qa.answer_type == "yes/no":
        return "no" if qa.answer == "yes" else "yes"
    if qa.answer_type == "number":
        return str(max(0, int(qa.answer) + rng.choice((-1, 1))))
    others = [c for c in qa.choices if c.lower() != qa.answer.lower()]
    return rng.choice(others).lower() if others else qa.answer.lower()


def answers(qa: QA, rng: random.Random) -> List[dict]:
    values = [qa.answer.lower()] * N_ANSWERS
    conf = ["yes"] * N_ANSWERS
    if rng.random() < DISAGREE_PROB:
        for j in rng.sample(range(N_ANSWERS), rng.randint(1, 3)):
            values[j], conf[j] = _alternative(qa, rng), "maybe"
    return [{"answer": v, "answer_confidence": c, "answer_id": j + 1} for j, (v, c) in enumerate(zip(values, conf))]


def n_images(sizes, seed: int) -> int:
    return sizes.vqav2_images


def build(sink: Sink, seed: int, sizes) -> int:
    dev, full, questions, annotations, scenes = [], [], [], [], []
    for i in range(sizes.vqav2_images):
        rng = stream(seed, "vqav2", i)
        scene = sample_scene(rng, config.OBJECTS)
        image_id = i + 1
        name = f"COCO_test2015_{image_id:012d}.png"
        sink.image(f"{ROOT}/test2015/{name}", scene, "eval")
        scenes.append((name, scene))
        qas = sample_questions(scene, rng, KIND_WEIGHTS, sizes.vqav2_per_image + 1)
        for k, qa in enumerate(qas):
            qid = image_id * 1000 + k
            row = {"question_id": qid, "image": name, "text": short_prompt(qa.question), "category": "default"}
            full.append(row)
            if k == sizes.vqav2_per_image:  # the extra question is test-standard only
                continue
            dev.append(row)
            questions.append({"image_id": image_id, "question": qa.question, "question_id": qid})
            ans = answers(qa, rng)
            majority = Counter(a["answer"] for a in ans).most_common(1)[0][0]
            annotations.append({"question_id": qid, "image_id": image_id,
                                "question_type": question_type(qa.question),
                                "answer_type": qa.answer_type, "multiple_choice_answer": majority,
                                "answers": ans})
    sink.jsonl(f"{ROOT}/llava_vqav2_mscoco_test-dev2015.jsonl", dev)
    sink.jsonl(f"{ROOT}/llava_vqav2_mscoco_test2015.jsonl", full)
    common = {"info": INFO, "license": LICENSE, "data_subtype": "test-dev2015", "data_type": "mscoco"}
    sink.json(f"{ROOT}/v2_OpenEnded_mscoco_test-dev2015_questions.json",
              {**common, "task_type": "Open-Ended", "questions": questions})
    sink.json(f"{ROOT}/v2_mscoco_test-dev2015_annotations.json", {**common, "annotations": annotations})
    write_scenes(sink, "vqav2", scenes)
    return len(dev)
