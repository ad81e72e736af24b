"""MME scorer: LLaVA's ``convert_answer_to_mme.py`` followed by MME's ``calculation.py``, in one pass.

Conversion (per answer, in answer-file order): subtask = ``question_id`` up to the first "/";
ground-truth file = image name with ``.txt``; the prompt loses "Answer the question using a single
word or phrase." and gains " Please answer yes or no." (or the double-space variant MME uses for some
questions) to find the Yes/No ground truth in ``<gt-dir>/<subtask>[/questions_answers_YN]/<image>.txt``.

Calculation per subtask: the answers are paired two by two IN ORDER (one image = two questions);
a reply is "yes"/"no" if it is exactly that (lower-cased) or its first 4 characters contain "yes"
(checked first) or "no", else "other" (always wrong); acc = correct / answers; acc+ = images with
both answers right / images; score = 100 * (acc + acc+). Perception = sum of the 10 perception
subtasks, Cognition = sum of the 4 cognition subtasks (max 2000 / 800).
CLI: ``--question-file --result-file --gt-dir [--out-dir]`` (``--out-dir`` writes LLaVA's per-subtask txt files).
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

from llava_restore.eval._common import Report, add_skip_args, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import AnswerFileError, question_id_prompt_key, read_jsonl
from llava_restore.eval.registry import register_scorer

EVAL_TYPES = {
    "Perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                   "artwork", "OCR"),
    "Cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
YES_NO_SUFFIX = " Please answer yes or no."
PREFIX_CHARS = 4  # calculation.py looks for yes/no in the first 4 characters
# a reply holding one of these no longer round-trips through LLaVA's "a<TAB>b<TAB>c<TAB>reply\n" txt lines:
# calculation.py reads them with readlines() (universal newlines: \r, \n, \r\n) and splits on tabs
TXT_BREAKING_CHARS = {"\t": "tab", "\n": "newline", "\r": "carriage return (\\r)"}


def load_ground_truth(gt_dir) -> Dict[Tuple[str, str, str], str]:
    """``{(subtask, txt file name, question): "Yes"|"No"}`` from MME's folders."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"MME ground-truth dir not found: {gt_dir}")
    gt = {}
    for cat_dir in sorted(p for p in gt_dir.iterdir() if p.is_dir()):
        qa_dir = cat_dir / "questions_answers_YN" if (cat_dir / "questions_answers_YN").is_dir() else cat_dir
        for txt in sorted(qa_dir.glob("*.txt")):
            for lineno, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.strip().split("\t")
                if len(parts) != 2:
                    raise AnswerFileError(f"{txt}:{lineno}: expected 'question<TAB>Yes|No', got {line[:80]!r}")
                gt[(cat_dir.name, txt.name, parts[0])] = parts[1]
    return gt


def mme_prompt(prompt: str, has_gt) -> str:
    """The MME ground-truth question of a LLaVA prompt (``has_gt(q)`` tells a known question)."""
    if SHORT_ANSWER_SUFFIX in prompt:
        prompt = prompt.replace(SHORT_ANSWER_SUFFIX, "").strip()
    if YES_NO_SUFFIX.strip() not in prompt:
        prompt = prompt + YES_NO_SUFFIX
        if not has_gt(prompt):
            prompt = prompt.replace(YES_NO_SUFFIX, " " + YES_NO_SUFFIX)
    return prompt


def parse_mme_reply(text: str) -> str:
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:PREFIX_CHARS]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def score_subtask(rows: List[Tuple[str, str, str, str]], name: str, report: Report) -> dict:
    """rows = (image txt, question, gt, reply) in answer order; pairs are consecutive rows."""
    if len(rows) % 2:
        report.warn(f"MME {name}: odd number of answers ({len(rows)}); calculation.py asserts pairs, the last "
                    "image counts with one answer (never acc+)")
    correct = n_other = both = mispaired = 0
    n_images = (len(rows) + 1) // 2
    for i in range(0, len(rows), 2):
        pair = rows[i:i + 2]
        if len(pair) == 2 and pair[0][0] != pair[1][0]:
            mispaired += 1
        ok = 0
        for _, _, gt, reply in pair:
            pred = parse_mme_reply(reply)
            n_other += pred == "other"
            ok += pred == gt.lower()
        correct += ok
        both += ok == 2
    if mispaired:
        report.warn(f"MME {name}: {mispaired} of {n_images} answer pairs mix two images (a missing or reordered "
                    "answer); acc+ follows calculation.py's pairing by position")
    acc, acc_plus = correct / len(rows), both / n_images
    return {"acc": 100 * acc, "acc_plus": 100 * acc_plus, "score": 100 * (acc + acc_plus), "n": len(rows),
            "n_other": n_other}


@register_scorer("mme")
def score_mme(result_file, gt_dir, question_file=None, out_dir=None, n_skipped: int = 0) -> dict:
    report = Report()
    gt = load_ground_truth(gt_dir)
    answers = read_jsonl(result_file)
    rows: Dict[str, list] = defaultdict(list)
    for i, a in enumerate(answers):
        qid = a["question_id"]
        category, txt = qid.split("/")[0], qid.split("/")[-1].split(".")[0] + ".txt"
        prompt = mme_prompt(a["prompt"], lambda q: (category, txt, q) in gt)
        if (category, txt, prompt) not in gt:
            raise ValueError(f"{result_file}: answer #{i + 1} ({qid!r}): no ground truth for {prompt!r} in "
                             f"{gt_dir}/{category}")
        breaking = [name for ch, name in TXT_BREAKING_CHARS.items() if ch in a["text"]]
        if breaking:
            report.warn(f"MME {qid!r} ({prompt!r}): reply contains a {'/'.join(breaking)}, which breaks LLaVA's txt "
                        "files (calculation.py splits lines on \\n and \\r, fields on tabs); scored as is")
        rows[category].append((txt, prompt, gt[(category, txt, prompt)], a["text"]))
    if question_file is not None:
        expected = [question_id_prompt_key(q) for q in read_jsonl(question_file)]
        got = {question_id_prompt_key(a) for a in answers}
        missing = [k for k in expected if k not in got]
        if missing:
            report.warn(f"MME: {len(missing)} of {len(expected)} questions unanswered, which shifts the image "
                        f"pairs: {missing[:20]}")
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for category, cat_rows in rows.items():
            with open(Path(out_dir) / f"{category}.txt", "w", encoding="utf-8") as f:
                f.writelines("\t".join(r) + "\n" for r in cat_rows)
    metrics = {"subtasks": {}, "n_answers": len(answers), "n_skipped": n_skipped}
    for eval_type, tasks in EVAL_TYPES.items():
        total = 0.0
        for task in tasks:
            if not rows.get(task):
                report.warn(f"MME: no answers for subtask {task!r}; {eval_type} total is incomplete")
                continue
            metrics["subtasks"][task] = score_subtask(rows[task], task, report)
            total += metrics["subtasks"][task]["score"]
        metrics[eval_type.lower()] = total
    unknown = sorted(set(rows) - {t for ts in EVAL_TYPES.values() for t in ts})
    if unknown:
        report.warn(f"MME: answers for unknown subtasks {unknown} are not in any total")
    metrics["warnings"] = report.messages
    return metrics


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="MME perception/cognition scores (LLaVA-1.5 conversion + calculation.py)")
    ap.add_argument("--question-file", default=None, help="llava_mme.jsonl (to check that nothing is missing)")
    ap.add_argument("--result-file", required=True, help="answers jsonl")
    ap.add_argument("--gt-dir", required=True, help="MME_Benchmark_release_version (or its ground-truth txt tree)")
    ap.add_argument("--out-dir", default=None, help="also write LLaVA's per-subtask txt files here")
    add_skip_args(ap)
    args = ap.parse_args(argv)
    metrics = score_mme(args.result_file, args.gt_dir, args.question_file, args.out_dir,
                        n_skipped=resolve_n_skipped(args, args.result_file))
    for task, m in metrics["subtasks"].items():
        print(f"\t{task} score: {m['score']:.2f}")
    print(f"Perception: {metrics['perception']:.2f}  Cognition: {metrics['cognition']:.2f}")
    print_metrics("MME", metrics)
    return metrics


if __name__ == "__main__":
    main()
