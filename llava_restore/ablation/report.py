"""Grid reports from the runs' result.json files: TensorBoard HParams, summary table, plot.

Everything here is derived from the run folders, so a report can be rebuilt at any time
(``python -m llava_restore.ablate GRID --report-only``); the TensorBoard folder is rewritten.
"""
from __future__ import annotations

import csv
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from llava_restore.analysis.plot import Panel, line_chart

from .grid import Grid, GridRun, describe
from .runs import Task, read_result


def main_metric(benchmark: str) -> str:
    from llava_restore.eval.benchmarks import get_benchmark  # noqa: PLC0415

    return get_benchmark(benchmark).main_metric


def metric_names(benchmarks: list[str], overrides: dict[str, str] | None = None) -> dict[str, str]:
    """benchmark -> the result.json metric to report: eval's main metric unless overridden."""
    overrides = overrides or {}
    bad = sorted(set(overrides) - set(benchmarks))
    if bad:
        raise ValueError(f"--metric given for benchmark(s) {bad} that are not in --benchmarks {benchmarks}")
    return {b: overrides.get(b) or main_metric(b) for b in benchmarks}


def result_metric(result: dict, name: str) -> Optional[float]:
    value = result.get("metrics", {}).get(name)
    return None if value is None else float(value)


def result_prefill_ms(result: dict) -> Optional[float]:
    value = result.get("timings", {}).get("prefill_ms_per_sample")
    return None if value is None else float(value)


@dataclass
class Row:
    index: int
    run: GridRun
    tokens: int  # n_vis, or the full count for the reference
    metric: dict[str, Optional[float]] = field(default_factory=dict)  # benchmark -> reported metric
    done: dict[str, bool] = field(default_factory=dict)  # benchmark -> result.json exists
    relative: dict[str, Optional[float]] = field(default_factory=dict)  # benchmark -> % of reference
    prefill_ms: dict[str, Optional[float]] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)

    @property
    def avg_relative(self) -> Optional[float]:
        vals = [v for v in self.relative.values() if v is not None]
        return sum(vals) / len(vals) if vals and len(vals) == len(self.relative) else None

    @property
    def mean_prefill_ms(self) -> Optional[float]:
        vals = [v for v in self.prefill_ms.values() if v is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def complete(self) -> bool:
        """Every benchmark has a result (its metric may still be undefined, e.g. POPE F1 with no "yes")."""
        return bool(self.done) and all(self.done.values())


def _short(key: str) -> str:
    return key.split(".", 1)[1]


def _value(run: GridRun, key: str):
    section, name = key.split(".", 1)
    return getattr(getattr(run.settings, section), name)


def collect(grid: Grid, tasks: list[Task], names: dict[str, str], full_tokens: int) -> list[Row]:
    benchmarks = list(names)
    by_run: dict[int, list[Task]] = {}
    for t in tasks:
        by_run.setdefault(t.run_index, []).append(t)
    rows = []
    for i, run in enumerate(grid.runs):
        red = run.settings.reduction
        row = Row(i, run, full_tokens if red.n_vis is None else int(red.n_vis))
        for t in by_run.get(i, []):
            res = read_result(t.folder)
            row.folders[t.benchmark] = str(t.folder)
            row.done[t.benchmark] = res is not None
            row.metric[t.benchmark] = None if res is None else result_metric(res, names[t.benchmark])
            row.prefill_ms[t.benchmark] = None if res is None else result_prefill_ms(res)
        for b in benchmarks:
            row.metric.setdefault(b, None)
        rows.append(row)
    refs = [r for r in rows if r.run.reference]
    for row in rows:
        for b in benchmarks:
            ref = refs[0].metric.get(b) if refs else None
            val = row.metric.get(b)
            row.relative[b] = 100.0 * val / ref if val is not None and ref else None
    return rows


# ------------------------------------------------------------------------------ table
def _fmt(v, nd=2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def label_keys(grid: Grid) -> list[str]:
    """method, restore, then every other varying key (n_vis is the token axis)."""
    keys = ["reduction.method", "reduction.restore"] + grid.axis_keys
    return [k for k in dict.fromkeys(keys) if k != "reduction.n_vis"]


def table(grid: Grid, rows: list[Row], names: dict[str, str]) -> tuple[list[str], list[list]]:
    benchmarks = list(names)
    keys = label_keys(grid)
    header = ["#"] + [_short(k) for k in keys] + ["tokens"]
    for b in benchmarks:
        header += [f"{b} {names[b]}", f"{b} rel%"]
    header += ["avg rel%"] + (PAPER_COLUMNS if grid.paper is not None else []) + ["prefill ms", "status"]
    body = []
    for r in rows:
        line = [r.index] + [("(full)" if r.run.reference and k == "reduction.method" else _value(r.run, k)) for k in keys]
        line.append(r.tokens)
        for b in benchmarks:
            line += [r.metric.get(b), r.relative.get(b)]
        line.append(r.avg_relative)
        if grid.paper is not None:
            line += list(paper_columns(grid, r))
        line += [r.mean_prefill_ms, "done" if r.complete else "missing"]
        body.append(line)
    return header, body


PAPER_COLUMNS = ["paper avg rel%", "measured - paper"]


def paper_value(grid: Grid, row: Row) -> Optional[float]:
    """The published average relative accuracy of this run's (method, restore, tokens); 100 for
    the full-token reference; None when the paper has no such row."""
    if grid.paper is None:
        return None
    if row.run.reference:
        return 100.0
    red = row.run.settings.reduction
    return grid.paper.lookup(red.method, red.restore, row.tokens)


def paper_columns(grid: Grid, row: Row) -> tuple[Optional[float], Optional[float]]:
    """(published avg rel%, measured avg rel% - published), None where either is missing."""
    pub = paper_value(grid, row)
    meas = row.avg_relative
    return pub, (None if pub is None or meas is None else meas - pub)


def write_tables(grid: Grid, rows: list[Row], names: dict[str, str], out_dir: Path) -> tuple[Path, Path]:
    header, body = table(grid, rows, names)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for line in body:
            w.writerow(["" if v is None else (f"{v:.4f}" if isinstance(v, float) else v) for v in line])
    lines = [f"# Ablation grid `{grid.name}` ({grid.path})", ""]
    if grid.description:
        lines += [grid.description, ""]
    refs = [r for r in rows if r.run.reference]
    lines += ["Relative accuracy = run / full-token reference (run #%s) x 100, per benchmark; avg rel%% is "
              "their mean." % (refs[0].index if refs else "none"), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    first_metric = header.index("tokens") + 1  # metric columns: after the labels, before "status"
    published = {header.index(c) for c in PAPER_COLUMNS if c in header}  # blank when the paper has no row
    undefined = False
    for r, line in zip(rows, body):
        cells = [_fmt(v) for v in line]
        for i in range(first_metric, len(line) - 1):
            if line[i] is None and r.complete and i not in published:
                cells[i], undefined = "n/a", True
        lines.append("| " + " | ".join(cells) + " |")
    if undefined:
        lines += ["", "n/a: undefined for a finished run (e.g. POPE F1 when the model never answers yes, "
                  "or a relative figure whose reference is undefined); the run's result.json says why."]
    if grid.paper is not None:
        measured = list(names)
        note = (f"paper avg rel%: {grid.paper.title}, the mean over its benchmarks "
                f"({', '.join(grid.paper.benchmarks)}); blank where it has no such row. "
                f"measured - paper = avg rel% - paper avg rel%.")
        if sorted(measured) != sorted(grid.paper.benchmarks):
            note += (f" The measured average is over {', '.join(measured)} only, so the two are not "
                     f"the same average.")
        lines += ["", note]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md_path, csv_path


# ------------------------------------------------------------------------------- plot
def series_label(run: GridRun, keys: list[str]) -> str:
    if run.reference:
        return "full"
    parts = []
    for k in keys:
        v = _value(run, k)
        if k == "reduction.restore":
            parts.append("+RESTORE" if v else "")
        elif k == "reduction.method":
            parts.append(str(v))
        else:
            parts.append(f"{_short(k)}={v}")
    return " ".join(p for p in parts if p) or "runs"


def write_plot(grid: Grid, rows: list[Row], names: dict[str, str], path: Path, full_tokens: int) -> Path:
    benchmarks = list(names)
    has_ref = any(r.run.reference and any(v is not None for v in r.metric.values()) for r in rows)
    use_rel = has_ref
    varies_tokens = "reduction.n_vis" in grid.axis_keys
    keys = label_keys(grid)

    def y_of(r: Row, b: Optional[str]):
        if b is None:
            return r.avg_relative
        return r.relative.get(b) if use_rel else r.metric.get(b)

    panels = []
    targets = list(benchmarks) + (["average"] if len(benchmarks) > 1 and use_rel else [])
    for b in targets:
        bench = None if b == "average" else b
        series: dict[str, list] = {}
        for r in rows:
            y = y_of(r, bench)
            if y is None or (r.run.reference and use_rel):
                continue
            if varies_tokens:
                series.setdefault(series_label(r.run, keys), []).append((float(r.tokens), y))
            else:
                series.setdefault("runs (x = table row #)", []).append((float(r.index), y))
        ylabel = "accuracy relative to full (%)" if use_rel else f"{names[bench] if bench else 'metric'}"
        hlines = [(100.0, f"full ({full_tokens} tokens)")] if use_rel else []
        panels.append(Panel(title=f"{grid.name}: {b}", xlabel="visual tokens" if varies_tokens else "run #",
                            ylabel=ylabel, series=series, hlines=hlines))
    line_chart(panels, path)
    return path


# ------------------------------------------------------------------------- tensorboard
def _hp_value(v):
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "none"
    if isinstance(v, (int, float)):
        return float(v)
    return str(v)


def hparams_of(run: GridRun, keys: list[str], tokens: int) -> dict:
    hp = {"method": _hp_value(run.settings.reduction.method), "restore": _hp_value(run.settings.reduction.restore),
          "tokens": float(tokens)}
    for k in keys:
        if k != "reduction.n_vis":
            hp[_short(k)] = _hp_value(_value(run, k))
    return hp


def metrics_of(row: Row, names: dict[str, str]) -> dict:
    out = {}
    for b in names:
        if row.metric.get(b) is not None:
            out[f"{b}/{names[b]}"] = row.metric[b]
        if row.relative.get(b) is not None:
            out[f"{b}/relative"] = row.relative[b]
        if row.prefill_ms.get(b) is not None:
            out[f"{b}/prefill_ms"] = row.prefill_ms[b]
    if row.avg_relative is not None:
        out["avg/relative"] = row.avg_relative
    return out


def run_name(row: Row) -> str:
    slug = re.sub(r"[^A-Za-z0-9=.+-]+", "_", describe(row.run)).strip("_")
    return f"{row.index:03d}_{slug}"[:120]


def write_tensorboard(grid: Grid, rows: list[Row], names: dict[str, str], tb_dir: Path) -> Path:
    """One TensorBoard run per complete grid run (session start/end info + metric scalars) and the
    experiment summary (every hparam with its discrete domain, every metric tag) at the root."""
    from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    from torch.utils.tensorboard.summary import hparams  # noqa: PLC0415

    if tb_dir.exists():
        shutil.rmtree(tb_dir)  # a derived artefact: rebuilt from the result files every time
    done = [r for r in rows if any(r.done.values())]
    entries = [(r, hparams_of(r.run, grid.axis_keys, r.tokens), metrics_of(r, names)) for r in done]
    if not entries:
        return tb_dir
    all_hp: dict = {}
    domains: dict[str, list] = {}
    for _, hp, _ in entries:
        for k, v in hp.items():
            all_hp.setdefault(k, v)
            if v not in domains.setdefault(k, []):
                domains[k].append(v)
    domains = {k: v for k, v in domains.items() if all(type(x) is type(all_hp[k]) for x in v)}
    metric_tags = list(dict.fromkeys(t for _, _, m in entries for t in m))
    exp, _, _ = hparams(all_hp, {t: 0.0 for t in metric_tags}, {k: sorted(v) for k, v in domains.items()})
    with SummaryWriter(log_dir=str(tb_dir)) as root:
        root.file_writer.add_summary(exp)
    for row, hp, metrics in entries:
        _, ssi, sei = hparams(hp, metrics)
        with SummaryWriter(log_dir=str(tb_dir / run_name(row))) as w:
            w.file_writer.add_summary(ssi)
            w.file_writer.add_summary(sei)
            for tag, value in metrics.items():
                if math.isfinite(value):
                    w.add_scalar(tag, value, 0)
    return tb_dir
