"""One grid run on one benchmark = one ``python -m llava_restore.eval.run`` invocation.

This module is the only place that knows eval.run's command line, its run-folder naming and
its ``result.json``; everything else in the ablation package goes through it.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from llava_restore.reduction.config import ReductionConfig

from .grid import GridRun
from .settings import EvalSettings

RESULT_FILE = "result.json"
EVAL_MODULE = "llava_restore.eval.run"


@dataclass
class Task:
    """A grid run on one benchmark."""

    run_index: int  # index into Grid.runs
    benchmark: str
    folder: Path  # the eval run folder (result.json inside when done)
    command: list[str]
    alias_of: Optional[int] = None  # index of an earlier task with the same folder (not run again)

    @property
    def result_path(self) -> Path:
        return self.folder / RESULT_FILE

    def done(self) -> bool:
        return read_result(self.folder) is not None


def reduction_opts(cfg: ReductionConfig) -> list[str]:
    """Every resolved field that differs from the CLI's own construction, as key=value items."""
    base = ReductionConfig(method=cfg.method, n_vis=cfg.n_vis, restore=cfg.restore).resolve()
    out = []
    for key, value in asdict(cfg).items():
        if key in ("method", "n_vis", "restore") or getattr(base, key) == value:
            continue
        out.append(f"{key}={'null' if value is None else str(value).lower() if isinstance(value, bool) else value}")
    return out


def eval_command(ev: EvalSettings, red: ReductionConfig, benchmark: str, out_root: Path,
                 python: str = sys.executable) -> list[str]:
    """The eval.run command line of one task."""
    cmd = [python, "-m", EVAL_MODULE, "--benchmark", benchmark, "--model-path", ev.model_path,
           "--output-root", str(out_root), "--conv-mode", ev.conv_mode, "--batch-size", str(ev.batch_size),
           "--temperature", str(ev.temperature), "--num_beams", str(ev.num_beams), "--num-chunks", str(ev.num_chunks),
           "--no-progress"]
    optional = {"--model-base": ev.model_base, "--vision-tower": ev.vision_tower, "--ckpt": ev.ckpt,
                "--top_p": ev.top_p, "--max_new_tokens": ev.max_new_tokens, "--device": ev.device,
                "--dtype": ev.dtype, "--attn-impl": ev.attn_impl, "--data-root": ev.data_root}
    for flag, value in optional.items():
        if value is not None:
            cmd += [flag, str(value)]
    if ev.vision_cache:
        cmd += ["--vision-cache", str(ev.vision_cache)]
    if red.method != "none":
        cmd += ["--reduction", red.method, "--n-vis", str(red.n_vis)]
    if red.restore:
        cmd.append("--restore")
    opts = reduction_opts(red)
    if opts:
        cmd += ["--reduction-opts", *opts]
    return cmd + list(ev.extra_args)


def run_folder(command: list[str]) -> Path:
    """The run folder eval.run derives for ``command`` (what ``--print-run-dir`` prints), computed
    in-process with eval.run's own parser, settings and ``resolve_run``."""
    from llava_restore.eval import run as er  # noqa: PLC0415  (heavy import, only when needed)

    argv = command[command.index(EVAL_MODULE) + 1:]
    ap = er.build_parser()
    try:
        args = ap.parse_args(argv)
        bench = er.get_benchmark(args.benchmark)
        settings = er.settings_from_args(args, er.get_adapter(bench.adapter), ap)
    except SystemExit:
        raise ValueError(f"eval.run rejects the command {' '.join(argv)} (see the message above)") from None
    return Path(er.resolve_run(args, bench, settings)[0])


def make_tasks(runs: list[GridRun], benchmarks: list[str], out_root: Path, python: str = sys.executable,
               folder_fn=run_folder) -> list[Task]:
    """One task per (run, benchmark).  A task whose folder an earlier task already has (settings
    that eval.run considers identical, e.g. differing only in batch size) is an alias: it is
    not run again and reads the earlier task's result."""
    tasks: list[Task] = []
    seen: dict[Path, int] = {}
    for i, run in enumerate(runs):
        for bench in benchmarks:
            cmd = eval_command(run.settings.eval, run.settings.reduction, bench, out_root, python)
            folder = Path(folder_fn(cmd))
            tasks.append(Task(i, bench, folder, cmd, alias_of=seen.get(folder)))
            seen.setdefault(folder, len(tasks) - 1)
    return tasks


def pending_tasks(tasks: list[Task]) -> list[tuple[int, Task]]:
    """(index, task) of the tasks to run: not aliases, no result yet."""
    return [(i, t) for i, t in enumerate(tasks) if t.alias_of is None and not t.done()]


def read_result(folder: Path) -> Optional[dict]:
    """The parsed result.json of a finished run, or None while it has none.

    A result.json that exists but does not parse is an error naming the file (a finished run's
    result is written atomically, so a broken one means something else wrote there)."""
    path = Path(folder) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it to rerun that run") from None
