"""OCRBench scorer (the official rule of MultimodalOCR / VLMEvalKit).

Input: ``OCRBench.json``, a list of ``{"image_path", "question", "answers" (str or list of str),
"dataset_name", "type"}``; an answer record's ``question_id`` is the item's ``id`` when items have
one, else its 0-based position in the list.

A prediction is correct if ANY ground-truth answer, normalised, is a substring of the normalised
prediction: for handwritten math (type "Handwritten Mathematical Expression Recognition" or dataset
"HME100k") both sides are stripped, newlines become spaces, and ALL spaces are removed (case kept);
otherwise both are lower-cased, stripped, and newlines become spaces. Scores are counts: per type,
"Text Recognition" = the six recognition types, and the final score out of N (1000 for OCRBench).
CLI: ``--question-file OCRBench.json --result-file answers.jsonl``.
"""
from __future__ import annotations

import argparse
import json
from typing import Iterable, List

from llava_restore.eval._common import Report, add_skip_args, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import read_jsonl
from llava_restore.eval.registry import register_scorer

RECOGNITION_TYPES = ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                     "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition")
OTHER_TYPES = ("Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction",
               "Handwritten Mathematical Expression Recognition")
HME_TYPE, HME_DATASET = OTHER_TYPES[-1], "HME100k"


def _norm_hme(s: str) -> str:
    return s.strip().replace("\n", " ").replace(" ", "")


def _norm_text(s: str) -> str:
    return s.lower().strip().replace("\n", " ")


def ocrbench_correct(prediction: str, answers: Iterable[str], hme: bool) -> bool:
    norm = _norm_hme if hme else _norm_text
    pred = norm(str(prediction))
    return any(norm(a) in pred for a in answers)


def _answers(item: dict, i: int, question_file) -> List[str]:
    if "answers" not in item:
        raise ValueError(f"{question_file}: item #{i} has no 'answers'")
    a = item["answers"]
    return [a] if isinstance(a, str) else [str(x) for x in a]


@register_scorer("ocrbench")
def score_ocrbench(result_file, question_file, n_skipped: int = 0) -> dict:
    report = Report()
    with open(question_file, encoding="utf-8") as f:
        items = json.load(f)
    if not isinstance(items, list):
        raise ValueError(f"{question_file}: expected the OCRBench json list")
    preds = {a["question_id"]: a["text"] for a in read_jsonl(result_file)}
    per_type = {t: 0 for t in RECOGNITION_TYPES + OTHER_TYPES}
    n_per_type = dict.fromkeys(per_type, 0)
    missing = []
    for i, item in enumerate(items):
        qid = item.get("id", i)
        typ = item.get("type")
        if typ not in per_type:
            raise ValueError(f"{question_file}: item #{i} has unknown type {typ!r} (known: {sorted(per_type)})")
        n_per_type[typ] += 1
        if qid not in preds:
            missing.append(qid)
            continue
        hme = typ == HME_TYPE or item.get("dataset_name") == HME_DATASET
        per_type[typ] += ocrbench_correct(preds[qid], _answers(item, i, question_file), hme)
    if missing:
        report.warn(f"OCRBench: {len(missing)} of {len(items)} questions unanswered (scored 0): {missing[:20]}")
    final = sum(per_type.values())
    return {"per_type": per_type, "n_per_type": n_per_type,
            "text_recognition": sum(per_type[t] for t in RECOGNITION_TYPES),
            **{t.lower().replace(" ", "_").replace("-", "_"): per_type[t] for t in OTHER_TYPES},
            "final_score": final, "n_questions": len(items),
            "final_score_norm": 100.0 * final / len(items) if items else None,
            "n_missing": len(missing), "n_skipped": n_skipped, "warnings": report.messages}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="OCRBench scores (official substring rule)")
    ap.add_argument("--question-file", required=True, help="OCRBench.json")
    ap.add_argument("--result-file", required=True, help="answers jsonl (question_id = item id or position)")
    add_skip_args(ap)
    args = ap.parse_args(argv)
    metrics = score_ocrbench(args.result_file, args.question_file, n_skipped=resolve_n_skipped(args, args.result_file))
    print(f"Final Score: {metrics['final_score']} / {metrics['n_questions']}")
    print_metrics("OCRBench", metrics)
    return metrics


if __name__ == "__main__":
    main()
