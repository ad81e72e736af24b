"""Published reference tables for the ablation report's "paper avg rel%" column.

A table is a YAML file ``llava_restore/ablation/paper_<name>.yaml`` (``paper_table1.yaml``: the
RESTORE paper's Table 1) mapping method -> restore -> tokens -> the published average accuracy
relative to the unreduced model.  A grid selects one with ``paper: <name>`` (or ``--paper``); the
report then shows, per run, the published figure beside the measured one and their difference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

PAPER_DIR = Path(__file__).resolve().parent


def known_papers() -> list[str]:
    return sorted(p.stem[len("paper_"):] for p in PAPER_DIR.glob("paper_*.yaml"))


@dataclass
class PaperTable:
    name: str
    title: str
    benchmarks: list[str]
    values: dict[tuple[str, bool, int], float] = field(default_factory=dict)  # (method, restore, tokens) -> %

    def lookup(self, method: str, restore: bool, tokens: int) -> Optional[float]:
        return self.values.get((method, bool(restore), int(tokens)))


def load_paper(name: str, directory: Path = PAPER_DIR) -> PaperTable:
    """Read and validate ``paper_<name>.yaml``; an unknown name lists the known ones."""
    path = directory / f"paper_{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem[len("paper_"):] for p in directory.glob("paper_*.yaml"))
        raise ValueError(f"unknown paper table {name!r}; known: {known}")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("rows"), dict):
        raise ValueError(f"{path}: needs a 'rows' mapping method -> restore -> tokens -> value")
    table = PaperTable(name, str(raw.get("title", name)), [str(b) for b in raw.get("benchmarks") or []])
    for method, by_restore in raw["rows"].items():
        if not isinstance(by_restore, dict):
            raise ValueError(f"{path}: rows.{method} must map restore (false/true) -> tokens -> value")
        for restore, by_tokens in by_restore.items():
            if not isinstance(restore, bool) or not isinstance(by_tokens, dict):
                raise ValueError(f"{path}: rows.{method}.{restore!r}: the key must be false or true and map "
                                 f"tokens -> value")
            for tokens, value in by_tokens.items():
                if not isinstance(tokens, int) or isinstance(tokens, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{path}: rows.{method}.{str(restore).lower()}.{tokens!r}: tokens must be an "
                                     f"integer and the value a number, got {value!r}")
                table.values[(str(method), restore, tokens)] = float(value)
    return table
