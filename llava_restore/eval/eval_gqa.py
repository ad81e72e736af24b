"""GQA: LLaVA's ``scripts/convert_gqa_for_eval.py`` + the accuracy of GQA's ``eval.py`` (testdev_balanced).

- Prediction = answer ``text.rstrip('.').lower()`` (nothing else: no article or space handling).
- Accuracy = exact string equality with ``answer`` over the questions of
  ``testdev_balanced_questions.json`` (``{qid: {"answer": ..., "isBalanced": ..., "types": ...}}``)
  that are balanced (a missing ``isBalanced`` counts as balanced). GQA's script raises on a
  question without prediction; we warn with the count and score it as wrong.
- ``open``/``binary`` accuracy as GQA splits them (structural type ``query`` = open) when ``types`` exist.
CLI: ``--result-file/--src answers.jsonl --questions testdev_balanced_questions.json [--dst predictions.json]``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from llava_restore.eval._common import Report, add_skip_args, pct, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import read_jsonl
from llava_restore.eval.registry import register_scorer


def gqa_prediction(text: str) -> str:
    return text.rstrip(".").lower()


def convert_gqa_answers(answers) -> list:
    """LLaVA's GQA predictions list ``[{"questionId", "prediction"}]``."""
    return [{"questionId": a["question_id"], "prediction": gqa_prediction(a["text"])} for a in answers]


@register_scorer("gqa")
def score_gqa(result_file, questions_file=None, predictions_file=None, n_skipped: int = 0) -> dict:
    report = Report()
    preds_list = convert_gqa_answers(read_jsonl(result_file))
    metrics = {"n_answers": len(preds_list), "n_skipped": n_skipped}
    if predictions_file is not None:
        Path(predictions_file).parent.mkdir(parents=True, exist_ok=True)
        with open(predictions_file, "w", encoding="utf-8") as f:
            json.dump(preds_list, f)
        metrics["predictions_file"] = str(predictions_file)
    if questions_file is not None:
        with open(questions_file, encoding="utf-8") as f:
            questions = json.load(f)
        if not isinstance(questions, dict):
            raise ValueError(f"{questions_file}: expected GQA questions json {{qid: {{'answer': ...}}}}")
        preds = {str(p["questionId"]): p["prediction"] for p in preds_list}
        scores, groups, missing = [], {"open": [], "binary": []}, []
        for qid, q in questions.items():
            if not q.get("isBalanced", True):
                continue
            if "answer" not in q:
                raise ValueError(f"{questions_file}: question {qid!r} has no 'answer'")
            if qid not in preds:
                missing.append(qid)
            correct = float(preds.get(qid) == q["answer"])
            scores.append(correct)
            if "types" in q:
                groups["open" if q["types"]["structural"] == "query" else "binary"].append(correct)
        if missing:
            report.warn(f"GQA: {len(missing)} of {len(scores)} balanced questions have no prediction (GQA's eval.py "
                        f"raises); scored as wrong: {missing[:20]}")
        extra = len(set(preds) - set(questions))
        if extra:
            report.warn(f"GQA: {extra} predictions are for questions absent from {questions_file} (ignored)")
        metrics.update({"accuracy": pct(sum(scores), len(scores)), "n_questions": len(scores),
                        "n_missing": len(missing)})
        for name, vals in groups.items():
            if vals:
                metrics[f"{name}_accuracy"] = pct(sum(vals), len(vals))
    metrics["warnings"] = report.messages
    return metrics


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="GQA testdev_balanced accuracy (LLaVA-1.5 conversion + GQA eval)")
    ap.add_argument("--result-file", "--src", dest="result_file", required=True, help="answers jsonl")
    ap.add_argument("--questions", "--annotation-file", dest="questions", default=None,
                    help="testdev_balanced_questions.json")
    ap.add_argument("--dst", "--predictions-file", dest="dst", default=None,
                    help="write LLaVA's predictions json (testdev_balanced_predictions.json) here")
    add_skip_args(ap)
    args = ap.parse_args(argv)
    if args.questions is None and args.dst is None:
        ap.error("give --questions (to score) and/or --dst (to convert)")
    metrics = score_gqa(args.result_file, args.questions, args.dst, n_skipped=resolve_n_skipped(args, args.result_file))
    print_metrics("GQA", metrics)
    return metrics


if __name__ == "__main__":
    main()
