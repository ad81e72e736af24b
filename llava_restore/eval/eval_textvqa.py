"""TextVQA scorer, as LLaVA-1.5's ``llava/eval/eval_textvqa.py`` (+ ``m4c_evaluator``) computes it.

- Answers are matched to ``TextVQA_0.5.1_val.json`` records by ``(image_id, question.lower())``:
  the answer's ``question_id`` is the image id, the question is recovered from its ``prompt``
  (:func:`question_from_prompt`).
- Score per answer: :func:`vqa_soft_score` after the EvalAI normaliser (mean over the 10
  leave-one-out subsets of min(1, matches/3)). Accuracy = mean over the ANSWERED questions
  (unanswered ones are silently ignored by the official script; we warn and also give
  ``accuracy_all`` with them counted as 0).
CLI: ``--annotation-file --result-file`` (or ``--result-dir`` for every ``*.jsonl`` in it).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Dict, Tuple

from llava_restore.eval._common import Report, add_skip_args, pct, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import read_jsonl
from llava_restore.eval.registry import register_scorer
from llava_restore.eval.vqa_normalize import vqa_soft_score

N_GT_ANSWERS = 10  # TextVQA has 10 human answers per question; the official evaluator asserts it
OCR_PROMPT_RE = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def question_from_prompt(prompt: str) -> str:
    """The lower-cased question inside a LLaVA TextVQA prompt (ValueError on an unknown layout)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        m = OCR_PROMPT_RE.search(prompt)
        if m is None:
            raise ValueError(f"TextVQA prompt starts with 'OCR tokens: ' but has no 'Question: ... Short answer:': "
                             f"{prompt[:80]!r}")
        question = m.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"unrecognised TextVQA prompt layout ({len(lines)} lines): {prompt[:80]!r}")
    return question.lower()


def load_annotations(annotation_file) -> Dict[Tuple[str, str], dict]:
    with open(annotation_file, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{annotation_file}: expected TextVQA json with a 'data' list")
    return {(a["image_id"], a["question"].lower()): a for a in data["data"]}


@register_scorer("textvqa")
def score_textvqa(result_file, annotation_file, n_skipped: int = 0) -> dict:
    report = Report()
    annotations = load_annotations(annotation_file)
    results = read_jsonl(result_file)
    scores = []
    for i, r in enumerate(results):
        try:
            question = question_from_prompt(r["prompt"])
        except ValueError as err:
            raise ValueError(f"{result_file}: answer #{i + 1} (question_id {r['question_id']!r}): {err}") from None
        ann = annotations.get((r["question_id"], question))
        if ann is None:
            raise ValueError(f"{result_file}: answer #{i + 1}: no annotation for image {r['question_id']!r} and "
                             f"question {question!r} in {annotation_file}")
        if len(ann["answers"]) != N_GT_ANSWERS:
            report.warn(f"TextVQA question {ann.get('question_id')!r} has {len(ann['answers'])} answers, not "
                        f"{N_GT_ANSWERS} (the official evaluator asserts); leave-one-out over what is there")
        scores.append(vqa_soft_score(r["text"], ann["answers"]))
    n_ann = len(annotations)
    if len(scores) != n_ann:
        report.warn(f"TextVQA: {len(scores)} answers for {n_ann} annotated questions; the official accuracy "
                    "averages over the answered ones only ('accuracy_all' counts the rest as 0)")
    return {"accuracy": pct(sum(scores), len(scores)), "accuracy_all": pct(sum(scores), max(n_ann, len(scores))),
            "n_samples": len(scores), "n_annotations": n_ann, "n_skipped": n_skipped, "warnings": report.messages}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="TextVQA accuracy with the EvalAI normaliser (LLaVA-1.5)")
    ap.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    ap.add_argument("--result-file", default=None)
    ap.add_argument("--result-dir", default=None, help="score every *.jsonl in this folder")
    add_skip_args(ap)
    args = ap.parse_args(argv)
    if (args.result_file is None) == (args.result_dir is None):
        ap.error("give exactly one of --result-file and --result-dir")
    files = [Path(args.result_file)] if args.result_file else sorted(Path(args.result_dir).glob("*.jsonl"))
    if not files:
        ap.error(f"no *.jsonl files in {args.result_dir}")
    out = {}
    for f in files:
        metrics = score_textvqa(f, args.annotation_file, n_skipped=resolve_n_skipped(args, f))
        print_metrics(f"TextVQA {f.stem}", metrics)
        out[str(f)] = metrics
    return out[str(files[0])] if len(files) == 1 else out


if __name__ == "__main__":
    main()
