"""OCRBench: text recognition and text-centric VQA.

Files, as OCRBench's official scripts expect them (``--OCRBench_file``, ``--image_folder``):
- ``eval/ocrbench/OCRBench/OCRBench.json``: a JSON list of
  {dataset_name, id, image_path, question, answers (list), type};
- ``eval/ocrbench/OCRBench_Images/<dataset_name>/<id>.png`` (``image_path`` is relative to it).
Types and dataset names are OCRBench's own, so its per-type and per-dataset tables apply.
"""
from __future__ import annotations

from dataclasses import replace

from llava_restore.playground import config
from llava_restore.playground.benchmarks.common import EVAL, write_scenes
from llava_restore.playground.scene import sample_scene
from llava_restore.playground.sink import Sink, stream

ROOT = f"{EVAL}/ocrbench"
# (type, dataset_name, text kind, question) ; the last one asks about one of two texts by colour
TASKS = (
    ("Regular Text Recognition", "IIIT5K", "word", "what is written in the image?"),
    ("Digit String Recognition", "ORAND", "digits", "what is the number in the image?"),
    ("Non-Semantic Text Recognition", "NonSemanticText", "nonsense", "what is written in the image?"),
    ("Scene Text-centric VQA", "textVQA", "word", "what is written in {color}?"),
)


def n_images(sizes, seed: int) -> int:
    return sizes.ocrbench_questions


def build(sink: Sink, seed: int, sizes) -> int:
    items, scenes = [], []
    for i in range(sizes.ocrbench_questions):
        qtype, dataset, kind, template = TASKS[i % len(TASKS)]
        pair = "{color}" in template
        cfg = replace(config.OCR_PAIR if pair else config.OCR_SINGLE, text_kinds=((kind, 1.0),))
        rng = stream(seed, "ocrbench", i)
        scene = sample_scene(rng, cfg, min_texts=2 if pair else 1)
        target = rng.choice(scene.texts)
        image_path = f"{dataset}/{i}.png"
        sink.image(f"{ROOT}/OCRBench_Images/{image_path}", scene, "eval")
        scenes.append((image_path, scene))
        items.append({"dataset_name": dataset, "id": i, "image_path": image_path,
                      "question": template.format(color=target.color), "answers": [target.text],
                      "type": qtype})
    sink.json(f"{ROOT}/OCRBench/OCRBench.json", items, indent=4)
    write_scenes(sink, "ocrbench", scenes)
    return len(items)
