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
- Where LLaVA's accuracy passes (all questions, then image, then video) crash, we warn and still
  score: a question type that is fully answered in a pass with no correct answer (KeyError: LLaVA
  sets a type's correct count only on a hit or an unanswered question) scores 0%; a pass with no
  questions (ZeroDivisionError) gives accuracy None.
CLI (LLaVA's): ``--annotation-file --result-file --result-upload-file``.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from llava_restore.eval._common import Report, add_skip_args, pct, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import AnswerFileError, iter_jsonl
from llava_restore.eval.registry import register_scorer

REQUIRED_KEYS = ("question_id", "answer", "question_type_id")
ANSWER_KEYS = ("question_id", "text")
DEFAULT_DATA_TYPE = "image"  # a question without data_type counts as an image question
N_SHOWN = 20  # ids listed in a warning


def load_seed_annotations(annotation_file) -> dict:
    with open(annotation_file, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ValueError(f"{annotation_file}: expected SEED-Bench json with a 'questions' list")
    for n, q in enumerate(data["questions"], start=1):
        lacking = [k for k in REQUIRED_KEYS if not isinstance(q, dict) or k not in q]
        if lacking:
            raise ValueError(f"{annotation_file}: questions[{n - 1}] lacks {lacking}")
    return data


def write_submission(path, rows) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


ACCURACY_PASSES = (None, "image", "video")  # LLaVA's eval_single runs: all questions, then per data type


def keyerror_types(records: list, type_name: dict) -> dict:
    """``{type name: [passes]}`` where LLaVA's ``eval_single`` raises KeyError: within a pass, every
    question of the type answered and none right. ``records`` = (type id, data type, answered, hit)."""
    crashes = defaultdict(list)
    for data_type in ACCURACY_PASSES:
        answered, hits = defaultdict(list), defaultdict(int)
        for type_id, dtype, was_answered, hit in records:
            if data_type is None or dtype == data_type:
                answered[type_id].append(was_answered)
                hits[type_id] += hit
        for type_id in sorted(answered, key=str):
            if all(answered[type_id]) and not hits[type_id]:
                crashes[type_name.get(type_id, str(type_id))].append(data_type or "all")
    return crashes


def warn_official_crashes(records: list, type_name: dict, report: Report) -> None:
    for name, passes in keyerror_types(records, type_name).items():
        report.warn(f"SEED: question type {name!r} is fully answered with no correct answer ({'/'.join(passes)} "
                    "questions): LLaVA's convert_seed_for_submission.py raises KeyError there; scored 0%")
    for data_type in ACCURACY_PASSES[1:]:
        if not any(dtype == data_type for _, dtype, _, _ in records):
            report.warn(f"SEED: no {data_type!r} questions in the annotation file: {data_type}_accuracy is None "
                        "(LLaVA's convert_seed_for_submission.py divides by zero there)")


def read_seed_answers(result_file) -> list:
    """Answer records; AnswerFileError naming the file and line of one without question_id or text."""
    answers = []
    for lineno, _, a in iter_jsonl(result_file):
        lacking = [k for k in ANSWER_KEYS if k not in a]
        if lacking:
            raise AnswerFileError(f"{result_file}:{lineno}: answer lacks {lacking}")
        answers.append(a)
    return answers


def annotated_metrics(data: dict, results: dict, report: Report):
    """(accuracy metrics, submission rows in annotation order) against SEED-Bench.json ``data``."""
    type_name = {v: k for k, v in data.get("question_type", {}).items()}
    per_type, per_data = defaultdict(list), defaultdict(list)
    upload_rows, missing, records = [], [], []
    for q in data["questions"]:
        r = results.get(str(q["question_id"]))
        if r is None:
            missing.append(q["question_id"])
        else:
            upload_rows.append({"question_id": q["question_id"], "prediction": r["text"]})
        hit = r is not None and r["text"] == q["answer"]
        data_type = q.get("data_type", DEFAULT_DATA_TYPE)
        per_type[type_name.get(q["question_type_id"], str(q["question_type_id"]))].append(hit)
        per_data[data_type].append(hit)
        records.append((q["question_type_id"], data_type, r is not None, hit))
    warn_official_crashes(records, type_name, report)
    if missing:
        report.warn(f"SEED: {len(missing)} of {len(data['questions'])} questions unanswered (wrong, and left "
                    f"out of the submission, where LLaVA crashes): {missing[:N_SHOWN]}")
    all_hits = [h for v in per_data.values() for h in v]
    metrics = {"accuracy": pct(sum(all_hits), len(all_hits)),
               "image_accuracy": pct(sum(per_data["image"]), len(per_data["image"])),
               "video_accuracy": pct(sum(per_data["video"]), len(per_data["video"])),
               "per_question_type": {k: pct(sum(v), len(v)) for k, v in sorted(per_type.items())},
               "n_questions": len(all_hits), "n_missing": len(missing)}
    return metrics, upload_rows


@register_scorer("seed")
def score_seed(result_file, annotation_file=None, upload_file=None, n_skipped: int = 0) -> dict:
    report = Report()
    answers = read_seed_answers(result_file)
    metrics = {"n_answers": len(answers), "n_skipped": n_skipped}
    if annotation_file is None:
        upload_rows = [{"question_id": a["question_id"], "prediction": a["text"]} for a in answers]
    else:
        results = {str(a["question_id"]): a for a in answers}
        accuracy, upload_rows = annotated_metrics(load_seed_annotations(annotation_file), results, report)
        metrics.update(accuracy)
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
