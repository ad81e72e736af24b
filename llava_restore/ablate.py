"""Run an ablation grid: expand it, skip the finished runs, run the rest, report.

    python -m llava_restore.ablate ablations/main.yaml --benchmarks gqa,pope \
        [--launcher local|slurm] [--parallel K] [--dry-run] [--out runs/ablations] \
        [--set eval.batch_size=8 ...] [--model-path PATH] [--report-only] [--paper table1]

Each (run, benchmark) is one ``python -m llava_restore.eval.run`` call writing its own run folder
under ``--out`` (named by eval.run from model + benchmark + resolved config); a folder with a
``result.json`` counts as done and is skipped, so rerunning a grid only runs what is missing.
The grid's report goes to ``<out>/grids/<name>/``: summary.md / summary.csv (accuracy relative
to the full-token run), accuracy_vs_tokens.png and tb/ (TensorBoard with the HParams plugin).
See docs/ablations.md.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from llava_restore.ablation.grid import Grid, GridError, describe, load_grid
from llava_restore.ablation.launch import run_local, sbatch_command, submit, write_task_file
from llava_restore.ablation.paper import load_paper
from llava_restore.ablation.report import collect, metric_names, write_plot, write_tables, write_tensorboard
from llava_restore.ablation.runs import Task, make_tasks, pending_tasks

FULL_TOKENS = 576  # LLaVA-1.5's 24 x 24 patch grid (the playground uses the same geometry)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m llava_restore.ablate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", help="grid file (omegaconf YAML), e.g. ablations/main.yaml")
    ap.add_argument("--benchmarks", default=None, help="comma-separated, e.g. gqa,pope (default: the grid's)")
    ap.add_argument("--launcher", choices=["local", "slurm"], default="local")
    ap.add_argument("--parallel", type=int, default=1, help="local: runs at a time; slurm: max array tasks at a time")
    ap.add_argument("--isolate", action="store_true",
                    help="local: every run in its own process (default: --parallel long-lived workers, one "
                         "interpreter and model load each; same answers and timings per run)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan (and, for slurm, write the task file) only")
    ap.add_argument("--out", default="runs/ablations", help="root of the run folders (shared by grids)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a fixed setting of every run, e.g. eval.batch_size=8 (repeatable)")
    ap.add_argument("--model-path", default=None, help="shortcut for --set eval.model_path=PATH")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from the finished runs")
    ap.add_argument("--metric", action="append", default=[], metavar="BENCH=KEY",
                    help="report result.json metric KEY for BENCH instead of eval's main metric, e.g. pope=mean_acc")
    ap.add_argument("--paper", default=None, metavar="NAME",
                    help="add the published 'paper avg rel%%' column of paper table NAME (e.g. table1; "
                         "'none' drops a grid's own); default: the grid's 'paper' key")
    ap.add_argument("--full-tokens", type=int, default=FULL_TOKENS, help="visual tokens of the unreduced model")
    ap.add_argument("--sbatch-args", default="",
                    help="extra sbatch options, written with '=': --sbatch-args='--partition=gpu --time=2:00:00'")
    ap.add_argument("--python", default=None,
                    help="interpreter in the run commands (default: this one locally, 'python' on Slurm)")
    return ap.parse_args(argv)


def pick_benchmarks(arg: str | None, grid: Grid) -> list[str]:
    from llava_restore.eval.benchmarks import known_benchmarks  # noqa: PLC0415

    names = [b for b in arg.split(",") if b] if arg else list(grid.benchmarks)
    if not names:
        raise GridError(f"{grid.path}: no benchmarks: pass --benchmarks (e.g. gqa,pope) or set 'benchmarks' in the grid")
    bad = [b for b in names if b not in known_benchmarks()]
    if bad:
        raise GridError(f"unknown benchmark(s) {bad}; known: {', '.join(known_benchmarks())}")
    return names


def print_plan(grid: Grid, tasks: list[Task]) -> None:
    todo = {i for i, _ in pending_tasks(tasks)}
    print(f"grid {grid.name!r} ({grid.path}): {len(grid.runs)} runs x {len(tasks) // max(1, len(grid.runs))} "
          f"benchmarks = {len(tasks)} tasks, {len(todo)} to run")
    for note in grid.duplicates:
        print(f"  note: {note}")
    for i, t in enumerate(tasks):
        state = "todo" if i in todo else "done" if t.done() else f"same as [{t.alias_of}]"
        print(f"  [{i:3d}] {state}  {t.benchmark:8s} {describe(grid.runs[t.run_index])}  -> {t.folder}")


def report(grid: Grid, tasks: list[Task], names: dict[str, str], grid_dir: Path, full_tokens: int) -> Path:
    rows = collect(grid, tasks, names, full_tokens)
    md, csv_path = write_tables(grid, rows, names, grid_dir)
    png = write_plot(grid, rows, names, grid_dir / "accuracy_vs_tokens.png", full_tokens)
    tb = write_tensorboard(grid, rows, names, grid_dir / "tb")
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md}, {csv_path}, {png}; TensorBoard: tensorboard --logdir {tb}")
    return md


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides) + ([f"eval.model_path={args.model_path}"] if args.model_path else [])
    try:
        grid = load_grid(args.grid, overrides)
        if args.paper is not None:
            grid.paper = None if args.paper == "none" else load_paper(args.paper)
        benchmarks = pick_benchmarks(args.benchmarks, grid)
        bad = [m for m in args.metric if "=" not in m]
        if bad:
            raise GridError(f"--metric {bad[0]!r} is not of the form BENCH=KEY")
        names = metric_names(benchmarks, dict(m.split("=", 1) for m in args.metric))
    except (GridError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    grid_dir = out / "grids" / grid.name
    python = args.python or (sys.executable if args.launcher == "local" else "python")
    tasks = make_tasks(grid.runs, benchmarks, out, python=python)
    print_plan(grid, tasks)
    if args.report_only:
        report(grid, tasks, names, grid_dir, args.full_tokens)
        return 0
    pending = pending_tasks(tasks)

    if args.launcher == "slurm":
        if not pending:
            print("nothing to run")
            report(grid, tasks, names, grid_dir, args.full_tokens)
            return 0
        task_file = write_task_file(pending, grid_dir / "slurm" / "tasks.txt")
        (grid_dir / "slurm" / "tasks.json").write_text(json.dumps(
            [{"array_index": k, "task": i, "benchmark": t.benchmark, "folder": str(t.folder), "command": t.command}
             for k, (i, t) in enumerate(pending)], indent=1), encoding="utf-8")
        cmd = sbatch_command(task_file, len(pending), grid_dir / "slurm", args.parallel if args.parallel > 1 else None,
                             shlex.split(args.sbatch_args), job_name=f"ablate-{grid.name}", repo=Path.cwd())
        print(f"task file: {task_file} ({len(pending)} array tasks)")
        print("$ " + shlex.join(cmd))
        if not args.dry_run:
            job = submit(cmd)
            print(f"submitted array job {job}")
        again = ["python", "-m", "llava_restore.ablate", args.grid, "--benchmarks", ",".join(benchmarks),
                 "--out", args.out, "--report-only"] + [x for o in overrides for x in ("--set", o)] \
            + [x for m in args.metric for x in ("--metric", m)] + (["--paper", args.paper] if args.paper else [])
        print("when it has finished, build the report with:\n  " + shlex.join(again))
        return 0

    if args.dry_run:
        return 0
    if pending:
        outcomes = run_local(pending, grid_dir / "logs", parallel=args.parallel, reuse_processes=not args.isolate)
        failed = [o for o in outcomes if o.returncode != 0 or not o.task.done()]
    else:
        print("nothing to run: every task has a result")
        failed = []
    report(grid, tasks, names, grid_dir, args.full_tokens)
    for o in failed:
        print(f"FAILED: {o.task.benchmark} {describe(grid.runs[o.task.run_index])} (rc={o.returncode}); log: {o.log}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
