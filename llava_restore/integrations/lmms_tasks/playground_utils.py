"""Functions of the local lmms-eval tasks ``playground_gqa`` and ``playground_pope``.

The data is LLaVA's ``./playground/data/eval`` layout (``llava_restore.eval.benchmarks``), read
from the working directory as LLaVA's eval scripts do: run lmms-eval from the repository root (or
any folder holding ``playground/data/eval``; ``python -m llava_restore.playground build`` writes
it). Nothing comes from the hub.

Scores are our scorers' on the task's answers (``llava_restore.eval.eval_gqa`` /
``eval_pope``): the answers are written, in question-file order, to a temporary answers file and
scored with the same files ``python -m llava_restore.eval.run`` passes, so the numbers equal
theirs on the same answers (GQA: accuracy over the balanced questions of the questions file;
POPE: mean F1 and mean accuracy over the categories, percentages). A metric that our scorer
leaves undefined (null) is NaN here.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Dict, List

from llava_restore.eval.answers import read_jsonl
from llava_restore.eval.benchmarks import BENCHMARKS
from llava_restore.eval.run import DEFAULT_DATA_ROOT
from llava_restore.model.mm_utils import load_image

GQA, POPE = BENCHMARKS["gqa"], BENCHMARKS["pope"]


def bench_dir(bench) -> Path:
    return Path(DEFAULT_DATA_ROOT) / bench.folder


def question_file(bench) -> Path:
    return bench_dir(bench) / bench.question_file


def image_path(bench, doc: dict) -> Path:
    return bench_dir(bench) / bench.image_folder / doc["image"]


# ----------------------------------------------------------------------------- docs
def doc_to_text(doc: dict, lmms_eval_specific_kwargs=None) -> str:
    """The question record's ``text`` (it carries LLaVA's answer-format line already)."""
    return doc["text"]


def doc_to_target(doc: dict) -> str:
    """No reference answer in the question record: the scorers read them from their own files."""
    return ""


def gqa_doc_to_visual(doc: dict) -> list:
    return [load_image(image_path(GQA, doc))]


def pope_doc_to_visual(doc: dict) -> list:
    return [load_image(image_path(POPE, doc))]


def answer_record(doc: dict, results: List[str]) -> dict:
    return {"question_id": doc["question_id"], "text": results[0]}


def gqa_process_results(doc: dict, results: List[str]) -> Dict[str, dict]:
    return {"gqa_accuracy": answer_record(doc, results)}


def pope_process_results(doc: dict, results: List[str]) -> Dict[str, dict]:
    rec = answer_record(doc, results)
    return {"pope_f1": rec, "pope_acc": rec}


# ----------------------------------------------------------------------------- scores
def _number(value) -> float:
    return math.nan if value is None else float(value)


def scorer_files(bench) -> Dict[str, Path]:
    """The scorer's inputs as ``llava_restore.eval.run`` resolves them (an absent "?name" is None)."""
    out = {}
    for key, name in bench.files.items():
        path = bench_dir(bench) / name.lstrip("?")
        out[key] = None if name.startswith("?") and not path.exists() else path
    return out


def score_answers(bench, answers: List[dict]) -> dict:
    """Our scorer on ``answers`` ({question_id, text}), put in question-file order first."""
    order = {q["question_id"]: i for i, q in enumerate(read_jsonl(question_file(bench)))}
    missing = [a["question_id"] for a in answers if a["question_id"] not in order]
    if missing:
        raise ValueError(f"{bench.name}: answers for question ids absent from {question_file(bench)}: {missing[:10]}")
    answers = sorted(answers, key=lambda a: order[a["question_id"]])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "answers.jsonl"
        path.write_text("".join(json.dumps(a) + "\n" for a in answers))
        return bench.score(path, scorer_files(bench), question_file(bench), Path(tmp), n_skipped=0)


def gqa_accuracy(items: List[dict]) -> float:
    return _number(score_answers(GQA, items)["accuracy"])


def pope_f1(items: List[dict]) -> float:
    return _number(score_answers(POPE, items)["mean_f1"])


def pope_acc(items: List[dict]) -> float:
    return _number(score_answers(POPE, items)["mean_acc"])
