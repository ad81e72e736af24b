"""ScienceQA scorer, as LLaVA-1.5's ``llava/eval/eval_science_qa.py`` computes it.

- ``--base-dir`` holds ``problems.json`` (``{pid: {"choices": [...], "answer": index, ...}}``) and
  ``pid_splits.json``; every problem of ``--split`` is scored, in split order.
- Only three reply forms are understood (:func:`parse_sqa_answer`): exactly a letter ``X``;
  ``X. ...`` (letter, period, space); or exactly one ``The answer is X`` + any one character.
  Anything else is FAILED (wrong), as is a letter beyond the problem's number of choices.
- A problem without an answer is FAILED, and its prompt is "Unknown" so it is NOT counted as an
  image question; IMG-Accuracy is over answers whose ``prompt`` contains ``<image>``.
CLI (LLaVA's): ``--base-dir --result-file --output-file --output-result --split test``.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Sequence

from llava_restore.eval._common import Report, add_skip_args, pct, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import read_jsonl
from llava_restore.eval.registry import register_scorer

OPTIONS = ("A", "B", "C", "D", "E")
ANSWER_IS_RE = re.compile(r"The answer is ([A-Z]).")  # "." is any character, as in LLaVA
FAILED = "FAILED"


def parse_sqa_answer(text: str, options: Sequence[str] = OPTIONS) -> str:
    """The option letter of a reply, or 'FAILED'."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = ANSWER_IS_RE.findall(text)
    return found[0] if len(found) == 1 else FAILED


def pred_index(letter: str, n_choices: int, options: Sequence[str] = OPTIONS) -> int:
    """Index of ``letter`` among the first ``n_choices`` options, else -1."""
    return options.index(letter) if letter in options[:n_choices] else -1


def _load_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"ScienceQA file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@register_scorer("sqa")
def score_science_qa(result_file, base_dir, split: str = "test", output_file=None, output_result=None,
                     n_skipped: int = 0) -> dict:
    report = Report()
    base_dir = Path(base_dir)
    splits = _load_json(base_dir / "pid_splits.json")
    if split not in splits:
        raise ValueError(f"{base_dir / 'pid_splits.json'} has no split {split!r} (has {sorted(splits)})")
    problems = _load_json(base_dir / "problems.json")
    absent = [pid for pid in splits[split] if pid not in problems]
    if absent:
        raise ValueError(f"{len(absent)} problems of split {split!r} are absent from problems.json: {absent[:20]}")
    predictions = {p["question_id"]: p for p in read_jsonl(result_file)}
    results = {"correct": [], "incorrect": []}
    sqa_results = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    missing = []
    for pid in splits[split]:
        prob = problems[pid]
        pred = predictions.get(pid)
        if pred is None:
            missing.append(pid)
            pred = {"text": FAILED, "prompt": "Unknown"}
        if "prompt" not in pred:
            raise ValueError(f"{result_file}: answer to {pid!r} has no 'prompt' (needed to tell image questions)")
        letter = parse_sqa_answer(pred["text"])
        idx = pred_index(letter, len(prob["choices"]))
        analysis = {"question_id": pid, "parsed_ans": letter, "ground_truth": OPTIONS[prob["answer"]],
                    "question": pred["prompt"], "pred": pred["text"], "is_multimodal": "<image>" in pred["prompt"]}
        sqa_results["results"][pid] = idx
        sqa_results["outputs"][pid] = pred["text"]
        results["correct" if idx == prob["answer"] else "incorrect"].append(analysis)
    if missing:
        report.warn(f"ScienceQA: {len(missing)} of {len(splits[split])} problems unanswered, scored FAILED and not "
                    f"counted as image questions (as LLaVA does): {missing[:20]}")
    correct, total = len(results["correct"]), len(results["correct"]) + len(results["incorrect"])
    img_correct = sum(x["is_multimodal"] for x in results["correct"])
    img_total = img_correct + sum(x["is_multimodal"] for x in results["incorrect"])
    sqa_results.update(acc=pct(correct, total), correct=correct, count=total)
    for path, obj in ((output_file, results), (output_result, sqa_results)):
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(obj, f, indent=2)
    n_failed = sum(x["parsed_ans"] == FAILED for x in results["incorrect"])
    return {"accuracy": pct(correct, total), "img_accuracy": pct(img_correct, img_total), "n_total": total,
            "n_correct": correct, "n_img": img_total, "n_img_correct": img_correct, "n_unparsed": n_failed,
            "n_missing": len(missing), "n_skipped": n_skipped, "warnings": report.messages}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="ScienceQA accuracy and IMG-accuracy (LLaVA-1.5)")
    ap.add_argument("--base-dir", required=True, help="folder with problems.json and pid_splits.json")
    ap.add_argument("--result-file", required=True)
    ap.add_argument("--output-file", default=None, help="per-question analysis json")
    ap.add_argument("--output-result", default=None, help="summary json (acc, results, outputs)")
    ap.add_argument("--split", default="test")
    add_skip_args(ap)
    args = ap.parse_args(argv)
    metrics = score_science_qa(args.result_file, args.base_dir, args.split, args.output_file, args.output_result,
                               n_skipped=resolve_n_skipped(args, args.result_file))
    acc, img = (f"{v:.2f}%" if v is not None else "n/a" for v in (metrics["accuracy"], metrics["img_accuracy"]))
    print(f"Total: {metrics['n_total']}, Correct: {metrics['n_correct']}, Accuracy: {acc}, IMG-Accuracy: {img}")
    print_metrics("ScienceQA", metrics)
    return metrics


if __name__ == "__main__":
    main()
