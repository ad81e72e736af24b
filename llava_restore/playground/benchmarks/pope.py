"""POPE: object existence with random, popular and adversarial negatives.

An "object" is a category, i.e. a shape ("square"), as real POPE asks about COCO categories; a scene
holds each shape at most once. Per image, 3 present categories (answer
yes) alternate with 3 absent ones (answer no), as in POPE. The negatives, per POPE's definitions:
- random: drawn uniformly from the categories absent from the image;
- popular: the most frequent categories over all POPE images' objects, absent from the image;
- adversarial: the categories co-occurring most often (same image) with the image's objects,
  absent from it.
Ties are broken by category name, so the choice is deterministic.

Files, as LLaVA's pope.sh and eval_pope.py expect them:
- ``eval/pope/llava_pope_test.jsonl``: {question_id, image, text, category}; categories in the
  order adversarial, random, popular with ids from 1, 10000001, 20000001 (as in the real file);
- ``eval/pope/coco/coco_pope_{adversarial,popular,random}.json``: JSON lines
  {question_id, image, text, label}, ids from 1 in each, in the same order as the question file;
- ``eval/pope/val2014/COCO_val2014_<12 digits>.png``.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Dict, List, Sequence

from llava_restore.playground import config, vocab
from llava_restore.playground.benchmarks.common import EVAL, short_prompt, write_scenes
from llava_restore.playground.scene import Scene, sample_scene
from llava_restore.playground.sink import Sink, stream

ROOT = f"{EVAL}/pope"
CATEGORIES = ("adversarial", "random", "popular")  # order of the real llava_pope_test.jsonl
ID_OFFSET = {"adversarial": 0, "random": 10000000, "popular": 20000000}
N_POS = 3  # present objects asked per image (and as many absent ones)


def all_categories() -> List[str]:
    return list(vocab.SHAPES)


def scene_categories(scene: Scene) -> List[str]:
    return [o.shape for o in scene.objects]


def frequency(scenes: Sequence[Scene]) -> Counter:
    return Counter(name for sc in scenes for name in scene_categories(sc))


def cooccurrence(scenes: Sequence[Scene]) -> Dict[str, Counter]:
    co: Dict[str, Counter] = {}
    for sc in scenes:
        names = scene_categories(sc)
        for a in names:
            co.setdefault(a, Counter()).update(b for b in names if b != a)
    return co


def negatives(scene: Scene, strategy: str, k: int, freq: Counter, co: Dict[str, Counter],
              rng: random.Random) -> List[str]:
    present = set(scene_categories(scene))
    absent = [c for c in all_categories() if c not in present]
    if strategy == "random":
        return rng.sample(absent, k)
    if strategy == "popular":
        return sorted(absent, key=lambda c: (-freq[c], c))[:k]
    if strategy == "adversarial":
        score = {c: sum(co.get(g, Counter())[c] for g in sorted(present)) for c in absent}
        return sorted(absent, key=lambda c: (-score[c], c))[:k]
    raise KeyError(f"unknown POPE strategy {strategy!r}; known: {sorted(CATEGORIES)}")


def question(name: str) -> str:
    return f"Is there {vocab.article(name)} {name} in the image?"


def n_images(sizes, seed: int) -> int:
    return sizes.pope_images


def build(sink: Sink, seed: int, sizes) -> int:
    cfg = config.OBJECTS
    if cfg.min_objects < N_POS:
        raise ValueError(f"POPE needs scenes with >= {N_POS} objects, config allows {cfg.min_objects}")
    scenes, names = [], []
    for i in range(sizes.pope_images):
        scene = sample_scene(stream(seed, "pope", "scene", i), cfg)
        name = f"COCO_val2014_{i + 1:012d}.png"
        sink.image(f"{ROOT}/val2014/{name}", scene, "eval")
        scenes.append(scene)
        names.append(name)
    freq, co = frequency(scenes), cooccurrence(scenes)

    rows, labels = [], {c: [] for c in CATEGORIES}
    for strategy in CATEGORIES:
        for i, (scene, name) in enumerate(zip(scenes, names)):
            pos = stream(seed, "pope", "positives", i).sample(scene_categories(scene), N_POS)
            neg = negatives(scene, strategy, N_POS, freq, co, stream(seed, "pope", strategy, i))
            for p, n in zip(pos, neg):
                for obj, label in ((p, "yes"), (n, "no")):
                    qid = len(labels[strategy]) + 1
                    labels[strategy].append({"question_id": qid, "image": name, "text": question(obj),
                                             "label": label})
                    rows.append({"question_id": ID_OFFSET[strategy] + qid, "image": name,
                                 "text": short_prompt(question(obj)), "category": strategy})
    sink.jsonl(f"{ROOT}/llava_pope_test.jsonl", rows)
    for strategy in sorted(CATEGORIES):
        sink.jsonl(f"{ROOT}/coco/coco_pope_{strategy}.json", labels[strategy])
    write_scenes(sink, "pope", zip(names, scenes))
    return len(rows)
