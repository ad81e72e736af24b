"""Launchers: run pending tasks locally (sequentially or K at a time) or as one Slurm array job."""
from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .runs import EVAL_MODULE, Task

WORKER_MODULE = "llava_restore.ablation.worker"

SBATCH_TEMPLATE = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "ablate.sbatch"


@dataclass
class Outcome:
    task: Task
    returncode: int
    seconds: float
    log: Path


def _log_path(log_dir: Path, task: Task, index: int) -> Path:
    return log_dir / f"task{index:04d}_{task.benchmark}.log"


def run_one(task: Task, index: int, log_dir: Path, env: dict | None = None) -> Outcome:
    log = _log_path(log_dir, task, index)
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        f.write("$ " + shlex.join(task.command) + "\n")
        f.flush()
        proc = subprocess.run(task.command, stdout=f, stderr=subprocess.STDOUT, env=env)
    return Outcome(task, proc.returncode, time.perf_counter() - t0, log)


class Worker:
    """One ``llava_restore.ablation.worker`` process: runs eval.run commands one after another in
    the same interpreter (imports and model loads paid once). Started lazily, restarted if it dies."""

    def __init__(self, python: str, env: dict | None):
        self.python, self.env = python, env
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([self.python, "-m", WORKER_MODULE], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, bufsize=1, env=self.env)
        return self.proc

    def run(self, task: Task, index: int, log_dir: Path) -> Outcome:
        log = _log_path(log_dir, task, index)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("$ " + shlex.join(task.command) + "\n", encoding="utf-8")
        t0 = time.perf_counter()
        proc = self._start()
        argv = task.command[task.command.index(EVAL_MODULE) + 1:]
        try:
            proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
            proc.stdin.flush()
            reply = proc.stdout.readline()
        except BrokenPipeError:
            reply = ""
        if not reply:  # the worker died (killed, out of memory): this task failed, the next gets a new one
            rc = proc.wait()
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"error: the ablation worker exited with status {rc} during this run\n")
            return Outcome(task, rc or 1, time.perf_counter() - t0, log)
        return Outcome(task, json.loads(reply)["rc"], time.perf_counter() - t0, log)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def _is_eval_run(task: Task) -> bool:
    return EVAL_MODULE in task.command[:3]


def run_local(tasks: list[tuple[int, Task]], log_dir: Path, parallel: int = 1, env: dict | None = None,
              reuse_processes: bool = True) -> list[Outcome]:
    """Run (index, task) pairs, ``parallel`` at a time.  Failures do not stop the rest.

    ``reuse_processes``: eval.run tasks go to ``parallel`` long-lived workers (one interpreter
    each, see ``llava_restore.ablation.worker``); otherwise every task is its own subprocess."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    outcomes: list[Outcome] = []
    bar = tqdm(total=len(tasks), desc="ablation runs", unit="run")
    pythons = {t.command[0] for _, t in tasks if _is_eval_run(t)}
    pool_of = [Worker(next(iter(pythons)), env) for _ in range(parallel)] if reuse_processes and len(pythons) == 1 else []
    workers: queue.Queue = queue.Queue()  # the idle ones
    for worker in pool_of:
        workers.put(worker)

    def run(task: Task, i: int) -> Outcome:
        if not pool_of or not _is_eval_run(task):
            return run_one(task, i, log_dir, env)
        worker = workers.get()
        try:
            return worker.run(task, i, log_dir)
        finally:
            workers.put(worker)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(run, task, i): (i, task) for i, task in tasks}
        for fut in as_completed(futures):
            out = fut.result()
            outcomes.append(out)
            state = "ok" if out.returncode == 0 and out.task.done() else f"FAILED (rc={out.returncode}, log {out.log})"
            bar.write(f"[{futures[fut][0]}] {out.task.benchmark} {out.task.folder.name}: {state} in {out.seconds:.1f}s")
            bar.update(1)
    bar.close()
    for worker in pool_of:
        worker.close()
    return outcomes


def write_task_file(tasks: list[tuple[int, Task]], path: Path) -> Path:
    """One shell-quoted command per line; line k (0-based) is array task k."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(shlex.join(t.command) + "\n" for _, t in tasks), encoding="utf-8")
    return path


def sbatch_command(task_file: Path, n_tasks: int, log_dir: Path, max_parallel: int | None = None,
                   extra_args: list[str] | None = None, template: Path = SBATCH_TEMPLATE,
                   job_name: str = "ablate", repo: Path | None = None) -> list[str]:
    """The sbatch call that submits ``n_tasks`` array tasks over ``task_file``."""
    array = f"0-{n_tasks - 1}" + (f"%{max_parallel}" if max_parallel else "")
    exports = f"ALL,ABLATE_TASKS={task_file.resolve()}"
    if repo is not None:
        exports += f",ABLATE_REPO={repo.resolve()}"
    return ["sbatch", "--parsable", f"--array={array}", f"--job-name={job_name}",
            f"--output={log_dir.resolve()}/%x_%A_%a.out", f"--export={exports}",
            *(extra_args or []), str(template)]


def submit(cmd: list[str]) -> str:
    """Run sbatch; returns the job id.  Fails clearly when sbatch is not installed."""
    if shutil.which(cmd[0]) is None:
        raise RuntimeError(f"{cmd[0]!r} not found on PATH: use --dry-run to write the task file and print the command")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed (rc={proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]
