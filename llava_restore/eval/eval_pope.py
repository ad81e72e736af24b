"""POPE scorer, as LLaVA-1.5's ``llava/eval/eval_pope.py`` computes it.

Rules that matter (and that a re-implementation tends to get wrong):
- one category per ``coco_pope_<category>.json`` in ``--annotation-dir`` (one ``{"label": ...}`` per line);
- the answers of a category are the answers (in answer-file order) whose question has that
  ``category`` in the question file; they are zipped with the labels BY POSITION, not by id
  (``zip`` silently truncates to the shorter list: we warn and also report id-aligned metrics);
- a reply is "no" iff a space-separated word of its first sentence (text before the first ".",
  commas removed) is exactly ``No``, ``no`` or ``not``; anything else is "yes";
- yes-ratio is over all answers of the category; accuracy/precision/recall/F1 over the zipped pairs.
All figures are percentages. CLI: ``--annotation-dir --question-file --result-file``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from llava_restore.eval._common import Report, add_skip_args, pct, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import AnswerFileError, iter_jsonl, read_jsonl
from llava_restore.eval.registry import register_scorer

ANNOTATION_RE = re.compile(r"^coco_pope_(.+)\.json$")
NO_WORDS = ("No", "no", "not")


def parse_yes_no(text: str) -> str:
    """'no' iff a space-separated word of the first sentence is No/no/not, else 'yes'."""
    first = text.split(".")[0]
    words = first.replace(",", "").split(" ")
    return "no" if any(w in words for w in NO_WORDS) else "yes"


def binary_metrics(preds: Sequence[int], labels: Sequence[int]) -> Dict[str, Optional[float]]:
    """POPE metrics of 0/1 predictions zipped with 0/1 labels (yes = 1); percentages.

    ``yes_ratio`` uses all ``preds``; the confusion counts use ``zip(preds, labels)`` as LLaVA does.
    Undefined ratios (zero denominators, where LLaVA divides by zero) are None.
    """
    tp = fp = tn = fn = 0
    for p, y in zip(preds, labels):
        tp += p == 1 and y == 1
        fp += p == 1 and y == 0
        tn += p == 0 and y == 0
        fn += p == 0 and y == 1
    precision = pct(tp, tp + fp)
    recall = pct(tp, tp + fn)
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    return {"acc": pct(tp + tn, tp + tn + fp + fn), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": pct(sum(1 for p in preds if p == 1), len(preds)),
            "TP": tp, "FP": fp, "TN": tn, "FN": fn, "n_answers": len(preds), "n_labels": len(labels)}


def read_labels(path: Path) -> List[int]:
    labels = []
    for lineno, _, rec in iter_jsonl(path):
        if "label" not in rec:
            raise AnswerFileError(f"{path}:{lineno}: annotation record lacks 'label'")
        labels.append(0 if rec["label"] == "no" else 1)
    return labels


def annotation_files(annotation_dir: Path, report: Report) -> Dict[str, Path]:
    if not annotation_dir.is_dir():
        raise FileNotFoundError(f"POPE annotation dir not found: {annotation_dir}")
    files = {}
    for p in sorted(annotation_dir.iterdir()):
        m = ANNOTATION_RE.match(p.name)
        if m:
            files[m.group(1)] = p
        elif not p.name.startswith("."):
            report.warn(f"{p}: not a coco_pope_<category>.json file, ignored (LLaVA's script asserts here)")
    if not files:
        raise FileNotFoundError(f"no coco_pope_<category>.json files in {annotation_dir}")
    return files


@register_scorer("pope")
def score_pope(result_file, question_file, annotation_dir, n_skipped: int = 0) -> dict:
    report = Report()
    questions = read_jsonl(question_file)
    category_of = {q["question_id"]: q["category"] for q in questions}
    answers = read_jsonl(result_file)
    unknown = [a["question_id"] for a in answers if a["question_id"] not in category_of]
    if unknown:
        raise ValueError(f"{result_file}: {len(unknown)} answers have question ids absent from {question_file}: "
                         f"{unknown[:20]}")
    results: Dict[str, dict] = {}
    for cat, ann_path in annotation_files(Path(annotation_dir), report).items():
        cur = [a for a in answers if category_of[a["question_id"]] == cat]
        preds = [0 if parse_yes_no(a["text"]) == "no" else 1 for a in cur]
        labels = read_labels(ann_path)
        if not cur:
            report.warn(f"POPE {cat}: no answers (LLaVA's script divides by zero here)")
        m = binary_metrics(preds, labels)
        cat_qids = [q["question_id"] for q in questions if q["category"] == cat]
        aligned = [a["question_id"] for a in cur] == cat_qids[:len(cur)]
        if len(cur) != len(labels) or not aligned:
            report.warn(f"POPE {cat}: {len(cur)} answers vs {len(labels)} labels"
                        f"{'' if aligned else ', answers not in question-file order'}; the official number "
                        "zips by position and is misaligned past the first gap; see 'by_question_id'")
            if len(cat_qids) == len(labels):
                label_of = dict(zip(cat_qids, labels))
                m["by_question_id"] = binary_metrics(preds, [label_of[a["question_id"]] for a in cur])
            else:
                report.warn(f"POPE {cat}: {len(cat_qids)} questions vs {len(labels)} labels: "
                            "cannot align answers to labels by question id")
        if cur and m["f1"] is None:
            report.warn(f"POPE {cat}: F1 is undefined (TP={m['TP']}, FP={m['FP']}: "
                        f"{'no yes answers' if m['TP'] + m['FP'] == 0 else 'precision + recall = 0'}); "
                        f"LLaVA's script divides by zero here; accuracy is {m['acc']}")
        results[cat] = m
    f1s = [m["f1"] for m in results.values()]
    accs = [m["acc"] for m in results.values() if m["acc"] is not None]
    if None in f1s:
        report.warn("POPE mean_f1 is undefined because a category's F1 is; see mean_acc")
    return {"categories": results,
            "mean_f1": sum(f1s) / len(f1s) if f1s and None not in f1s else None,
            "mean_acc": sum(accs) / len(accs) if accs else None,
            "n_answers": len(answers), "n_questions": len(questions), "n_skipped": n_skipped,
            "warnings": report.messages}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="POPE accuracy/precision/recall/F1/yes-ratio per category (LLaVA-1.5)")
    ap.add_argument("--annotation-dir", required=True, help="folder with coco_pope_<category>.json")
    ap.add_argument("--question-file", required=True, help="llava_pope_test.jsonl")
    ap.add_argument("--result-file", required=True, help="answers jsonl")
    add_skip_args(ap)
    args = ap.parse_args(argv)
    metrics = score_pope(args.result_file, args.question_file, args.annotation_dir,
                         n_skipped=resolve_n_skipped(args, args.result_file))
    for cat, m in metrics["categories"].items():
        print(f"Category: {cat}, # samples: {m['n_answers']}")
        print(f"TP\tFP\tTN\tFN\n{m['TP']}\t{m['FP']}\t{m['TN']}\t{m['FN']}")
    print_metrics("POPE", metrics)
    return metrics


if __name__ == "__main__":
    main()
