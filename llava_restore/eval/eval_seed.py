"""SEED-Bench: accuracy per question type / image / video / all, and the submission file, as LLaVA's
``scripts/convert_seed_for_submission.py`` does.

- Ground truth: ``SEED-Bench.json`` (``{"questions": [{"question_id", "answer", "data_type",
  "question_type_id"}], "question_type": {name: id}}``).
- A reply is right iff its text EQUALS the answer letter (no stripping: "A." is wrong).
- Every annotated question counts (an unanswered one is wrong). Question ids are compared as
  strings (LLaVA mixes int and str ids).
- Submission: one ``{"question_id", "prediction"}`` JSON line per question, in annotation order (in
  answer order without an annotation file). LLaVA crashes on an unanswered question; we leave it
  out and warn with the ids.
CLI (LLaVA's): ``--annotation-file --result-file --result-upload-file``.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from llava_restore.eval._common import Report, add_skip_args, pct, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import read_jsonl
from llava_restore.eval.registry import register_scorer


def load_seed_annotations(annotation_file) -> dict:
    with open(annotation_file, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "questions" not in data:
        raise ValueError(f"{annotation_file}: expected SEED-Bench json with a 'questions' list")
    return data


def write_submission(path, rows) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


@register_scorer("seed")
def score_seed(result_file, annotation_file=None, upload_file=None, n_skipped: int = 0) -> dict:
    report = Report()
    answers = read_jsonl(result_file)
    results = {str(a["question_id"]): a for a in answers}
    metrics = {"n_answers": len(answers), "n_skipped": n_skipped}
    if annotation_file is None:
        upload_rows = [{"question_id": a["question_id"], "prediction": a["text"]} for a in answers]
    else:
        data = load_seed_annotations(annotation_file)
        type_name = {v: k for k, v in data.get("question_type", {}).items()}
        per_type, per_data = defaultdict(list), defaultdict(list)
        upload_rows, missing = [], []
        for q in data["questions"]:
            r = results.get(str(q["question_id"]))
            if r is None:
                missing.append(q["question_id"])
            else:
                upload_rows.append({"question_id": q["question_id"], "prediction": r["text"]})
            hit = r is not None and r["text"] == q["answer"]
            per_type[type_name.get(q["question_type_id"], str(q["question_type_id"]))].append(hit)
            per_data[q.get("data_type", "image")].append(hit)
        if missing:
            report.warn(f"SEED: {len(missing)} of {len(data['questions'])} questions unanswered (wrong, and left "
                        f"out of the submission, where LLaVA crashes): {missing[:20]}")
        all_hits = [h for v in per_data.values() for h in v]
        metrics.update({"accuracy": pct(sum(all_hits), len(all_hits)),
                        "image_accuracy": pct(sum(per_data["image"]), len(per_data["image"])),
                        "video_accuracy": pct(sum(per_data["video"]), len(per_data["video"])),
                        "per_question_type": {k: pct(sum(v), len(v)) for k, v in sorted(per_type.items())},
                        "n_questions": len(all_hits), "n_missing": len(missing)})
    if upload_file is not None:
        write_submission(upload_file, upload_rows)
        metrics["upload_file"] = str(upload_file)
    metrics["warnings"] = report.messages
    return metrics


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="SEED-Bench accuracy and submission file (LLaVA-1.5)")
    ap.add_argument("--annotation-file", default=None, help="SEED-Bench.json")
    ap.add_argument("--result-file", required=True, help="answers jsonl")
    ap.add_argument("--result-upload-file", default=None, help="submission jsonl to write")
    add_skip_args(ap)
    args = ap.parse_args(argv)
    if args.annotation_file is None and args.result_upload_file is None:
        ap.error("give --annotation-file (to score) and/or --result-upload-file (to convert)")
    metrics = score_seed(args.result_file, args.annotation_file, args.result_upload_file,
                         n_skipped=resolve_n_skipped(args, args.result_file))
    print_metrics("SEED-Bench", metrics)
    return metrics


if __name__ == "__main__":
    main()
