"""VQAv2: the EvalAI submission json (LLaVA's ``scripts/convert_vqav2_for_submission.py``) and a local
accuracy when a val-style annotation file is at hand.

- Submission: one ``{"question_id", "answer"}`` per question of the question file, in its order;
  ``answer`` is the EvalAI-normalised model text, or "" for an unanswered question (as LLaVA does;
  we also warn with the count).
- Local accuracy (``--annotation-file``, official ``v2_mscoco_val2014_annotations.json`` layout:
  ``{"annotations": [{"question_id", "answers": [{"answer": ...}, ...], "answer_type"}]}``): the VQA
  leave-one-out soft score with the EvalAI normaliser applied to both sides (as the TextVQA scorer).
  The EvalAI server normalises with the same rules, but its number can differ in rare corner cases.
CLI: ``--question-file --result-file --output-file [--annotation-file]``, or LLaVA's ``--dir --ckpt --split``.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

from llava_restore.eval._common import Report, add_skip_args, pct, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import read_jsonl
from llava_restore.eval.registry import register_scorer
from llava_restore.eval.vqa_normalize import normalize_answer, vqa_soft_score


def load_vqa_annotations(annotation_file) -> dict:
    with open(annotation_file, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{annotation_file}: expected a VQA annotation json with an 'annotations' list")
    return {a["question_id"]: a for a in data["annotations"]}


@register_scorer("vqav2")
def score_vqav2(result_file, question_file, output_file=None, annotation_file=None, n_skipped: int = 0) -> dict:
    report = Report()
    results = {}
    for r in read_jsonl(result_file):
        if r["question_id"] in results:
            report.warn(f"VQAv2: question {r['question_id']!r} answered twice in {result_file}; the last answer is used")
        results[r["question_id"]] = r["text"]
    questions = read_jsonl(question_file)
    submission = [{"question_id": q["question_id"],
                   "answer": normalize_answer(results[q["question_id"]]) if q["question_id"] in results else ""}
                  for q in questions]
    missing = [q["question_id"] for q in questions if q["question_id"] not in results]
    if missing:
        report.warn(f"VQAv2: {len(missing)} of {len(questions)} questions unanswered (submitted as ''): {missing[:20]}")
    metrics = {"n_questions": len(questions), "n_answered": len(questions) - len(missing),
               "n_missing": len(missing), "n_skipped": n_skipped}
    if output_file is not None:
        Path(output_file).parent.mkdir(parents=True, exist_ok=True)
        with open(output_file, "w", encoding="utf-8") as f:
            json.dump(submission, f)
        metrics["submission_file"] = str(output_file)
    if annotation_file is not None:
        annotations = load_vqa_annotations(annotation_file)
        per_type = defaultdict(list)
        scores = []
        for row in submission:
            ann = annotations.get(row["question_id"])
            if ann is None:
                continue
            s = vqa_soft_score(row["answer"], [a["answer"] for a in ann["answers"]])
            scores.append(s)
            per_type[ann.get("answer_type", "all")].append(s)
        if len(scores) != len(submission):
            report.warn(f"VQAv2: {len(submission) - len(scores)} questions have no annotation in {annotation_file}; "
                        "the accuracy covers the annotated ones")
        metrics["accuracy"] = pct(sum(scores), len(scores))
        metrics["accuracy_per_answer_type"] = {k: pct(sum(v), len(v)) for k, v in sorted(per_type.items())}
        metrics["n_scored"] = len(scores)
    metrics["warnings"] = report.messages
    return metrics


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="VQAv2 submission json (+ local accuracy) as LLaVA-1.5 does")
    ap.add_argument("--question-file", default=None, help="llava_vqav2_mscoco_test2015.jsonl (or a val split)")
    ap.add_argument("--result-file", default=None, help="merged answers jsonl")
    ap.add_argument("--output-file", default=None, help="submission json to write")
    ap.add_argument("--annotation-file", default=None, help="val-style VQA annotation json for local accuracy")
    ap.add_argument("--dir", default=None, help="LLaVA layout root (e.g. ./playground/data/eval/vqav2)")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--split", default=None)
    add_skip_args(ap)
    args = ap.parse_args(argv)
    if args.dir is not None:
        if args.ckpt is None or args.split is None:
            ap.error("--dir needs --ckpt and --split")
        args.result_file = args.result_file or os.path.join(args.dir, "answers", args.split, args.ckpt, "merge.jsonl")
        args.question_file = args.question_file or os.path.join(args.dir, "llava_vqav2_mscoco_test2015.jsonl")
        args.output_file = args.output_file or os.path.join(args.dir, "answers_upload", args.split, f"{args.ckpt}.json")
    if args.result_file is None or args.question_file is None:
        ap.error("give --question-file and --result-file (or --dir --ckpt --split)")
    metrics = score_vqav2(args.result_file, args.question_file, args.output_file, args.annotation_file,
                          n_skipped=resolve_n_skipped(args, args.result_file))
    print_metrics("VQAv2", metrics)
    return metrics


if __name__ == "__main__":
    main()
