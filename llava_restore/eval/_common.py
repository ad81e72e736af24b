"""Helpers shared by the scorer modules: warnings collected into the metrics, skipped-question args."""
from __future__ import annotations

import argparse
import json
import warnings
from typing import List, Optional

from llava_restore.eval.answers import default_errors_path, read_skipped


class ScorerWarning(UserWarning):
    """A problem the official scorer would crash on or silently hide (counts, alignment, ...)."""


class Report:
    """Collects the warnings of one scoring run; they end up in ``metrics["warnings"]``."""

    def __init__(self) -> None:
        self.messages: List[str] = []

    def warn(self, msg: str) -> None:
        self.messages.append(msg)
        warnings.warn(msg, ScorerWarning, stacklevel=2)


def add_skip_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--errors-file", default=None,
                        help="JSONL of skipped questions ({question_id, error}); default: errors.jsonl "
                             "next to the result file, when present")
    parser.add_argument("--n-skipped", type=int, default=None,
                        help="number of skipped questions (overrides --errors-file)")


def resolve_n_skipped(args: argparse.Namespace, result_file) -> int:
    if args.n_skipped is not None:
        return args.n_skipped
    errors_file = args.errors_file or default_errors_path(result_file)
    return len(read_skipped(errors_file))


def pct(num: float, den: float) -> Optional[float]:
    """100 * num / den, or None when den is 0 (the official scorers divide by zero there)."""
    return 100.0 * num / den if den else None


def print_metrics(title: str, metrics: dict) -> None:
    for msg in metrics.get("warnings", []):
        print(f"WARNING: {msg}")
    shown = {k: v for k, v in metrics.items() if k != "warnings"}
    print(f"== {title}")
    print(json.dumps(shown, indent=2, default=str))
