"""MMBench: local CircularEval with the official 2023 option matching, and LLaVA's submission xlsx.

Option matching follows ``can_infer`` of the 2023 MMBench evaluator (OpenCompass
``tools/eval_mmbench.py``, the one behind LLaVA-1.5's published 67.7), before its ChatGPT fallback:
1. choices: the row's A/B/C/D cells that are not empty (nor a string pandas reads as NaN, such as
   "None" or "NA"; the official tools load the tsv with pandas);
2. letter (``can_infer_option``): split the reply on whitespace (punctuation stays attached); the
   candidate letters are A-E, whatever the row's options;
   a. if exactly one candidate is a whole token, that letter, except a lone "A" in a reply of more
      than 3 tokens (read as an article): then go on to b;
   b. else the first of the patterns ``X.  X,  X:  X)  X).  (X)  (X).  :X  :X,  :X.  :X)  :X).``
      (in this order) that exactly one candidate matches as a whole token gives the letter;
3. text (``can_infer_text``): otherwise the option whose lower-cased text is a substring of the
   lower-cased reply, if exactly one is (no length limit);
4. otherwise unresolved (the official evaluator asks ChatGPT): counted as wrong locally, and
   reported in ``n_unresolved`` (questions) and ``n_unresolved_replies``.
A letter that is not one of the row's options (E, or D for a 3-option row) is a wrong answer.
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
from collections import defaultdict
from typing import Dict, List, Optional

from llava_restore.eval._common import Report, add_skip_args, pct, print_metrics, resolve_n_skipped
from llava_restore.eval.answers import AnswerFileError, iter_jsonl, read_questions
from llava_restore.eval.registry import register_scorer
from llava_restore.eval.xlsx import write_xlsx

CIRCULAR_STRIDE = 1_000_000  # circular copy k of question i has index i + k * CIRCULAR_STRIDE
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
OPTION_COLUMNS = "ABCD"  # the official build_choices reads these columns only
LETTER_CANDIDATES = "ABCDE"  # can_infer_option looks for these letters, whatever the row's options
ARTICLE = "A"
ARTICLE_MAX_TOKENS = 3  # a lone bare "A" is a letter only in a reply of at most this many tokens
BARE = "{}"
# tried in this order after the bare letters; the first one exactly one letter matches decides
LETTER_PATTERNS = ("{}.", "{},", "{}:", "{})", "{}).", "({})", "({}).", ":{}", ":{},", ":{}.", ":{})", ":{}).")
API_FAILURE = "Failed to obtain answer via API"  # the official GPT-failure marker: no letter is read from it
DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
PREDICTION_COLUMN_POS = 6
RIGHT, WRONG, UNRESOLVED = "right", "wrong", "unresolved"
N_SHOWN = 20  # ids listed in a warning


def build_choices(row: dict) -> Dict[str, str]:
    return {ch: row[ch] for ch in OPTION_COLUMNS if ch in row and row[ch] not in PANDAS_NA}


def letters_as_tokens(tokens: List[str], pattern: str) -> List[str]:
    return [ch for ch in LETTER_CANDIDATES if pattern.format(ch) in tokens]


def match_letter(reply: str) -> Optional[str]:
    """``can_infer_option``: the letter (A-E) the reply names, None when none is inferable."""
    if API_FAILURE in reply:
        return None
    tokens = reply.split()
    bare = letters_as_tokens(tokens, BARE)
    if len(bare) == 1 and not (bare[0] == ARTICLE and len(tokens) > ARTICLE_MAX_TOKENS):
        return bare[0]
    for pattern in LETTER_PATTERNS:
        found = letters_as_tokens(tokens, pattern)
        if len(found) == 1:
            return found[0]
    return None


def match_text(reply: str, choices: Dict[str, str]) -> Optional[str]:
    """``can_infer_text``: the only option whose text occurs in the reply (case-insensitive)."""
    reply = reply.lower()
    found = [ch for ch, text in choices.items() if str(text).lower() in reply]
    return found[0] if len(found) == 1 else None


def match_option(reply: str, choices: Dict[str, str]) -> Optional[str]:
    """``can_infer``: the letter a reply picks (possibly not among ``choices``: a wrong answer), None when
    unresolved (the official evaluator would ask ChatGPT)."""
    return match_letter(reply) or match_text(reply, choices)


def check_rows(rows: list, annotation_file) -> Dict[int, dict]:
    """``{index: row}``; AnswerFileError naming the data row of a short/long row, a bad or repeated index."""
    by_index = {}
    for n, r in enumerate(rows, start=1):
        where = f"{annotation_file}: data row {n}"
        if None in r:
            raise AnswerFileError(f"{where}: {len(r[None])} tab-separated fields more than the header")
        short = [col for col, v in r.items() if v is None]
        if short:
            raise AnswerFileError(f"{where}: fewer tab-separated fields than the header (no {short})")
        if not r.get("index", "").strip().lstrip("-").isdigit():
            raise AnswerFileError(f"{where}: 'index' must be an integer, got {r.get('index')!r}")
        idx = int(r["index"])
        if idx in by_index:
            raise AnswerFileError(f"{where}: index {idx} repeated")
        by_index[idx] = r
    return by_index


def read_predictions(result_file) -> Dict[int, str]:
    """``{question_id: reply}``; AnswerFileError naming the line of a missing field, bad or repeated id."""
    predictions = {}
    for lineno, _, a in iter_jsonl(result_file):
        where = f"{result_file}:{lineno}"
        for key in ("question_id", "text"):
            if key not in a:
                raise AnswerFileError(f"{where}: answer lacks {key!r}")
        if not str(a["question_id"]).strip().lstrip("-").isdigit():
            raise AnswerFileError(f"{where}: 'question_id' must be an MMBench integer index, got {a['question_id']!r}")
        qid = int(a["question_id"])
        if qid in predictions:
            raise AnswerFileError(f"{where}: question_id {qid} answered twice")
        predictions[qid] = str(a["text"])
    return predictions


def copy_outcome(row: dict, matched: Optional[str]) -> str:
    if matched is None:
        return UNRESOLVED
    return RIGHT if matched == row["answer"] else WRONG


def question_outcome(outcomes: List[str]) -> str:
    """CircularEval: one wrong copy fails the question; all copies right is a hit; else unresolved."""
    if WRONG in outcomes:
        return WRONG
    return RIGHT if all(o == RIGHT for o in outcomes) else UNRESOLVED


def circular_eval(by_index: Dict[int, dict], predictions: Dict[int, str], report: Report) -> dict:
    matched = {i: match_option(p, build_choices(by_index[i])) for i, p in predictions.items() if i in by_index}
    groups = defaultdict(list)
    for idx in sorted(by_index):
        groups[idx % CIRCULAR_STRIDE].append(idx)
    outcomes, single = {}, []
    for main_idx, copies in groups.items():
        if main_idx not in by_index:
            continue
        per_copy = [copy_outcome(by_index[i], matched.get(i)) for i in copies]
        single.append(per_copy[0] == RIGHT)
        outcomes[main_idx] = question_outcome(per_copy)
    n_unresolved = sum(o == UNRESOLVED for o in outcomes.values())
    unresolved_replies = sorted(i for i, m in matched.items() if m is None)
    not_options = sorted(i for i, m in matched.items() if m is not None and m not in build_choices(by_index[i]))
    if n_unresolved:
        report.warn(f"MMBench unresolved: {n_unresolved} questions have a reply no rule could match "
                    f"({len(unresolved_replies)} replies, e.g. {unresolved_replies[:N_SHOWN]}; the official evaluator "
                    "asks ChatGPT for those); counted as wrong")
    hits = {i: o == RIGHT for i, o in outcomes.items()}
    return {"hits": hits, "circular_accuracy": pct(sum(hits.values()), len(hits)), "n_questions": len(hits),
            "n_unresolved": n_unresolved, "n_unresolved_replies": len(unresolved_replies),
            "n_letter_not_an_option": len(not_options), "single_accuracy": pct(sum(single), len(single))}


def per_category(by_index: Dict[int, dict], hits: Dict[int, bool], columns) -> dict:
    out = {}
    for col in ("category", "l2-category"):
        if col in columns:
            per = defaultdict(list)
            for main_idx, hit in hits.items():
                per[by_index[main_idx][col]].append(hit)
            out[f"per_{col.replace('-', '_')}"] = {k: pct(sum(v), len(v)) for k, v in sorted(per.items())}
    return out


def submission_table(rows: list, predictions: Dict[int, str]):
    columns = [c for c in rows[0] if c not in DROPPED_COLUMNS] if rows else []
    columns.insert(min(PREDICTION_COLUMN_POS, len(columns)), "prediction")
    table = []
    for r in rows:
        idx = int(r["index"])
        table.append([idx if c == "index" else predictions.get(idx) if c == "prediction"
                      else (None if r[c] in PANDAS_NA else r[c]) for c in columns])
    return columns, table


def warn_alignment(by_index: Dict[int, dict], predictions: Dict[int, str], annotation_file, report: Report) -> list:
    unknown = sorted(set(predictions) - set(by_index))
    if unknown:
        report.warn(f"MMBench: {len(unknown)} answers have indices absent from {annotation_file}: {unknown[:N_SHOWN]}")
    missing = sorted(set(by_index) - set(predictions))
    if missing:
        report.warn(f"MMBench: {len(missing)} of {len(by_index)} rows unanswered (unresolved): {missing[:N_SHOWN]}")
    return missing


@register_scorer("mmbench")
def score_mmbench(result_file, annotation_file, upload_file=None, n_skipped: int = 0) -> dict:
    report = Report()
    rows = read_questions(annotation_file)
    by_index = check_rows(rows, annotation_file)
    predictions = read_predictions(result_file)
    missing = warn_alignment(by_index, predictions, annotation_file, report)
    metrics = {"n_rows": len(rows), "n_answers": len(predictions), "n_missing": len(missing), "n_skipped": n_skipped}
    if rows and "answer" in rows[0]:
        result = circular_eval(by_index, predictions, report)
        hits = result.pop("hits")
        metrics.update(result)
        metrics.update(per_category(by_index, hits, rows[0]))
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
