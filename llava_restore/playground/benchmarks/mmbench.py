"""MMBench (dev, 20230712 layout) with circular copies.

``eval/mmbench/mmbench_dev_20230712.tsv``, tab separated, columns
index, question, hint, A, B, C, D, answer, category, source, l2-category, comment, split, image.
``image`` is the base64 PNG; unused options and empty hints/comments are empty fields (NaN for
pandas, like the real file). A question with n options appears n times: at ``index`` and at
``index + k * 1000000`` (k = 1..n-1) with the options rotated right by k (option j of copy k is
option (j - k) mod n of the original), so the answer letter moves with it. All originals come
first, then the first copies, and so on.
"""
from __future__ import annotations

import base64
import csv
import io
import random
from typing import List, Optional, Tuple

from llava_restore.playground import config, vocab
from llava_restore.playground.benchmarks.common import EVAL, redraw, write_scenes
from llava_restore.playground.questions import OPTION_COUNTS, QA, ask, distractor_pool, mc_options
from llava_restore.playground.scene import Scene
from llava_restore.playground.sink import Sink, stream

ROOT = f"{EVAL}/mmbench"
TSV = f"{ROOT}/mmbench_dev_20230712.tsv"
COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source",
           "l2-category", "comment", "split", "image")
CIRCULAR_STRIDE = 1000000
# pandas reads these strings as NaN, and LLaVA's is_none() treats 'none'/'nan' as missing.
NA_STRINGS = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
              "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null", "none"}

# category -> (question kinds, l2-category), following MMBench's taxonomy
CATEGORIES = {
    "attribute_recognition": (("color_query", "shape_query"), "Fine-grained Perception (single-instance)"),
    "object_localization": (("location",), "Fine-grained Perception (single-instance)"),
    "ocr": (("ocr_read",), "Fine-grained Perception (single-instance)"),
    "spatial_relationship": (("rel_query",), "Fine-grained Perception (cross-instance)"),
    "image_scene": (("background",), "Coarse Perception"),
}
HINT = "The image shows simple shapes on a plain background."


def _question(scene: Scene, rng: random.Random, category: str) -> Optional[Tuple[QA, List[str], int]]:
    kinds, _ = CATEGORIES[category]
    qa = ask(scene, rng, rng.choice(kinds))
    if qa is None:
        return None
    n_opts = rng.choice(OPTION_COUNTS)
    opts, ans = mc_options(qa, rng, n_opts, distractor_pool(qa, scene, rng))
    return qa, opts, ans


def _check_field(value: str, where: str) -> str:
    if any(ch in value for ch in "\t\n\r\""):
        raise ValueError(f"{where}: {value!r} contains a tab, newline or quote (breaks the TSV)")
    if value in NA_STRINGS:
        raise ValueError(f"{where}: {value!r} would be read as a missing value")
    return value


def n_images(sizes, seed: int) -> int:
    return sizes.mmbench_questions


def build(sink: Sink, seed: int, sizes) -> int:
    names = sorted(CATEGORIES)
    base_rows, scenes = [], []
    for i in range(sizes.mmbench_questions):
        rng = stream(seed, "mmbench", i)
        category = names[i % len(names)]
        cfg = config.OCR_PAIR if category == "ocr" and rng.random() < 0.3 else (
            config.OCR_SINGLE if category == "ocr" else config.OBJECTS)
        scene, (qa, opts, ans) = redraw(rng, cfg, lambda sc, r: _question(sc, r, category),
                                        f"MMBench question {i}", min_texts=1 if category == "ocr" else 0)
        png = sink.image_png(scene, "eval")
        scenes.append((f"mmbench:{i}", scene))
        hint = HINT if rng.random() < 0.3 else ""
        base_rows.append((i, qa, hint, opts, ans, category, base64.b64encode(png).decode("ascii")))

    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
    writer.writerow(COLUMNS)
    for k in range(max(len(r[3]) for r in base_rows) if base_rows else 0):
        for index, qa, hint, opts, ans, category, b64 in base_rows:
            n = len(opts)
            if k >= n:
                continue
            rotated = [opts[(j - k) % n] for j in range(n)]
            where = f"mmbench question {index}"
            cells = [_check_field(o, where) for o in rotated] + [""] * (4 - n)
            writer.writerow([index + k * CIRCULAR_STRIDE, _check_field(qa.question, where), hint,
                             *cells, vocab.OPTION_LETTERS[(ans + k) % n], category, "playground",
                             CATEGORIES[category][1], "", "dev", b64])
    sink.text(TSV, out.getvalue())
    write_scenes(sink, "mmbench", scenes)
    return len(base_rows)
