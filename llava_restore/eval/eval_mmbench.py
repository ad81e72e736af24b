"""MMBench: local CircularEval with the official option matching, and LLaVA's submission xlsx.

Option matching (MMBench's evaluator, before its ChatGPT fallback), per reply and row:
1. the row's choices are its A/B/C/D... cells that are not empty (nor a string pandas reads as
   NaN, such as "None" or "NA", since the official tools load the tsv with pandas);
2. a reply containing a refusal phrase maps to "Z" (a wrong answer);
3. letter: replace each of ``.()[],:;!*#{}`` by a space and split on whitespace; if exactly one
   choice letter occurs as a token, that letter; if none does but a token "Z" does, "Z";
4. text: otherwise, unless the reply is longer than twice the total option length, the option
   whose lower-cased text is a substring of the lower-cased reply, if exactly one is;
5. otherwise unresolved (the official evaluator would ask ChatGPT; locally it counts as wrong and
   is reported in ``n_unresolved``).
CircularEval: a question (index < 1e6) is right only if every circular copy (index + k*1e6) is
matched to its ground truth; a copy matched to a wrong letter fails the question even when another
copy is unresolved. Missing answers are unresolved.
Submission (LLaVA's ``convert_mmbench_for_submission.py``): the tsv minus hint/category/source/image/
comment/l2-category, with a ``prediction`` column (raw reply text) inserted at position 6.
CLI: ``--annotation-file --result-file [--upload-file x.xlsx]`` or LLaVA's ``--result-dir --upload-dir --experiment``.
"""
from __future__ import annotations

import argparse
import os
import string
from collections import defaultdict
from typing import Dict, Optional

from llava_restore.eval._common import Report, add_skip_args, pct, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import read_jsonl, read_questions
from llava_restore.eval.registry import register_scorer
from llava_restore.eval.xlsx import write_xlsx

CIRCULAR_STRIDE = 1_000_000  # circular copy k of question i has index i + k * CIRCULAR_STRIDE
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
SPLIT_CHARS = ".()[],:;!*#{}"
DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
PREDICTION_COLUMN_POS = 6
REFUSED = "Z"


def build_choices(row: dict) -> Dict[str, str]:
    return {ch: row[ch] for ch in string.ascii_uppercase if ch in row and row[ch] not in PANDAS_NA}


def match_letter(reply: str, choices: Dict[str, str]) -> Optional[str]:
    if any(r in reply for r in REFUSALS):
        return REFUSED
    for c in SPLIT_CHARS:
        reply = reply.replace(c, " ")
    tokens = reply.split()
    found = [ch for ch in choices if ch in tokens]
    if len(found) == 1:
        return found[0]
    if not found and REFUSED in tokens:
        return REFUSED
    return None


def match_text(reply: str, choices: Dict[str, str]) -> Optional[str]:
    reply = reply.lower()
    if len(reply) > 2 * sum(len(v) for v in choices.values()):
        return None
    found = [ch for ch, v in choices.items() if v.lower() in reply]
    return found[0] if len(found) == 1 else None


def match_option(reply: str, choices: Dict[str, str]) -> Optional[str]:
    """The letter a reply picks (or 'Z' for a refusal), None when unresolved."""
    return match_letter(reply, choices) or match_text(reply, choices)


def submission_table(rows: list, predictions: Dict[int, str]):
    columns = [c for c in rows[0] if c not in DROPPED_COLUMNS] if rows else []
    columns.insert(min(PREDICTION_COLUMN_POS, len(columns)), "prediction")
    table = []
    for r in rows:
        idx = int(r["index"])
        table.append([idx if c == "index" else predictions.get(idx) if c == "prediction"
                      else (None if r[c] in PANDAS_NA else r[c]) for c in columns])
    return columns, table


@register_scorer("mmbench")
def score_mmbench(result_file, annotation_file, upload_file=None, n_skipped: int = 0) -> dict:
    report = Report()
    rows = read_questions(annotation_file)
    by_index = {int(r["index"]): r for r in rows}
    predictions = {}
    for a in read_jsonl(result_file):
        predictions[int(a["question_id"])] = str(a["text"])
    unknown = sorted(set(predictions) - set(by_index))
    if unknown:
        report.warn(f"MMBench: {len(unknown)} answers have indices absent from {annotation_file}: {unknown[:20]}")
    missing = sorted(set(by_index) - set(predictions))
    if missing:
        report.warn(f"MMBench: {len(missing)} of {len(by_index)} rows unanswered (unresolved): {missing[:20]}")
    metrics = {"n_rows": len(rows), "n_answers": len(predictions), "n_missing": len(missing), "n_skipped": n_skipped}
    has_gt = bool(rows) and "answer" in rows[0]
    if has_gt:
        groups = defaultdict(list)
        for idx in sorted(by_index):
            groups[idx % CIRCULAR_STRIDE].append(idx)
        hits, n_unresolved, single = {}, 0, []
        for main_idx, copies in groups.items():
            if main_idx not in by_index:
                continue
            preds = [match_option(predictions[i], build_choices(by_index[i])) if i in predictions else None
                     for i in copies]
            gts = [by_index[i]["answer"] for i in copies]
            single.append(preds[0] == gts[0])
            wrong = any(p is not None and p != g for p, g in zip(preds, gts))
            hits[main_idx] = all(p == g for p, g in zip(preds, gts))
            n_unresolved += not wrong and not hits[main_idx]
        if n_unresolved:
            report.warn(f"MMBench: {n_unresolved} questions have a reply no rule could match (the official "
                        "evaluator asks ChatGPT for those); counted as wrong")
        metrics.update({"circular_accuracy": pct(sum(hits.values()), len(hits)), "n_questions": len(hits),
                        "n_unresolved": n_unresolved, "single_accuracy": pct(sum(single), len(single))})
        for col in ("category", "l2-category"):
            if col in rows[0]:
                per = defaultdict(list)
                for main_idx, hit in hits.items():
                    per[by_index[main_idx][col]].append(hit)
                metrics[f"per_{col.replace('-', '_')}"] = {k: pct(sum(v), len(v)) for k, v in sorted(per.items())}
    else:
        report.warn(f"MMBench: {annotation_file} has no 'answer' column (test split): no local accuracy")
    if upload_file is not None:
        columns, table = submission_table(rows, predictions)
        write_xlsx(upload_file, columns, table)
        metrics["upload_file"] = str(upload_file)
    metrics["warnings"] = report.messages
    return metrics


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="MMBench CircularEval accuracy and submission xlsx (LLaVA-1.5)")
    ap.add_argument("--annotation-file", required=True, help="mmbench_dev_20230712.tsv (or a test tsv)")
    ap.add_argument("--result-file", default=None, help="answers jsonl")
    ap.add_argument("--upload-file", default=None, help="submission xlsx to write")
    ap.add_argument("--result-dir", default=None, help="LLaVA layout: <result-dir>/<experiment>.jsonl")
    ap.add_argument("--upload-dir", default=None, help="LLaVA layout: <upload-dir>/<experiment>.xlsx")
    ap.add_argument("--experiment", default=None)
    add_skip_args(ap)
    args = ap.parse_args(argv)
    if args.experiment is not None:
        if args.result_dir is None:
            ap.error("--experiment needs --result-dir")
        args.result_file = args.result_file or os.path.join(args.result_dir, f"{args.experiment}.jsonl")
        if args.upload_dir is not None:
            args.upload_file = args.upload_file or os.path.join(args.upload_dir, f"{args.experiment}.xlsx")
    if args.result_file is None:
        ap.error("give --result-file (or --result-dir with --experiment)")
    metrics = score_mmbench(args.result_file, args.annotation_file, args.upload_file,
                            n_skipped=resolve_n_skipped(args, args.result_file))
    print_metrics("MMBench", metrics)
    return metrics


if __name__ == "__main__":
    main()
