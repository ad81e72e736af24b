"""The Slurm templates (scripts/slurm/) run through a real one-node Slurm cluster.

The session fixture starts the cluster with scripts/slurm/local_cluster.sh (installing slurm-wlm
and munge from Debian when missing, as root) and stops it at the end if it started it. Where it
cannot run (not root, no apt-get) every test here is skipped with the script's reason;
LLAVA_RESTORE_SLURM=0 skips them too. Any other start failure is a test error.

The templates' resource lines are for a GPU cluster (--gres=gpu:N, 8+ CPUs, 64G); the local node
has 2 CPUs and no GPU, so every submission overrides them on the sbatch line (LOCAL_RES), exactly
as a user adapts the templates to a cluster. Data: the tiny playground build with more POPE images
(216 questions); model: a random tiny LLaVA whose answers depend on image and question.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "scripts" / "slurm"
LOCAL = SLURM_DIR / "local_cluster.sh"
CANNOT_RC = 3  # local_cluster.sh: this host cannot run a cluster (reason on stderr)
LOCAL_RES = ["--gres=none", "--mem=2G", "--cpus-per-task=1"]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"}
WAIT_S = 240
POPE_IMAGES = 12  # x 6 questions x 3 categories = 216 questions, 108 per shard
N_Q = POPE_IMAGES * 6 * 3
EVAL_FLAGS = ["--max_new_tokens", "3", "--reduction", "divprune", "--n-vis", "64", "--restore"]


# ----------------------------------------------------------------------------- cluster and jobs
@pytest.fixture(scope="session")
def cluster():
    """The environment for sbatch/scontrol calls (SLURM_CONF of the local cluster, one thread)."""
    if os.environ.get("LLAVA_RESTORE_SLURM") == "0":
        pytest.skip("LLAVA_RESTORE_SLURM=0: Slurm tests disabled")
    conf = subprocess.run(["bash", str(LOCAL), "env"], capture_output=True, text=True, check=True)
    env = {**os.environ, "SLURM_CONF": conf.stdout.strip().split("=", 1)[1], "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    was_up = subprocess.run(["bash", str(LOCAL), "status"], capture_output=True, env=env).returncode == 0
    if not was_up:
        start = subprocess.run(["bash", str(LOCAL), "start"], capture_output=True, text=True, env=env)
        if start.returncode == CANNOT_RC:
            pytest.skip(f"no local Slurm cluster here: {start.stderr.strip()}")
        assert start.returncode == 0, f"local_cluster.sh start failed (rc {start.returncode}):\n{start.stderr}"
    yield env
    if not was_up:
        subprocess.run(["bash", str(LOCAL), "stop"], env=env, check=True)


def sh(env, *cmd, cwd=REPO, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_records(env, job: str) -> list[dict]:
    """`scontrol -o show job` records of a job (every task of an array job)."""
    out = sh(env, "scontrol", "-o", "show", "job", job).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def states(env, job: str, reasons: bool = False) -> dict[str, str]:
    """Task id (array index, else job id) -> JobState (with its Reason if ``reasons``)."""
    return {r.get("ArrayTaskId") or r["JobId"]: r["JobState"] + (f" ({r.get('Reason')})" if reasons else "")
            for r in job_records(env, job)}


def wait_jobs(env, *jobs: str, logs: Path | None = None, timeout: float = WAIT_S) -> dict[str, dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        now = {j: states(env, j) for j in jobs}
        if all(s in TERMINAL for st in now.values() for s in st.values()):
            return now
        if time.monotonic() > deadline:
            now = {j: states(env, j, reasons=True) for j in jobs}
            node = sh(env, "scontrol", "-o", "show", "node").stdout.strip()
            raise AssertionError(f"jobs {now} not finished after {timeout} s\nnode: {node}\n{log_tails(logs)}")
        time.sleep(0.5)


def log_tails(folder: Path | None) -> str:
    if folder is None or not folder.is_dir():
        return ""
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(folder.glob("*.out")))


def wait_for(cond, what: str, timeout: float = WAIT_S, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def n_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.is_file() else 0


# ----------------------------------------------------------------------------- model and data
@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    import torch

    from llava_restore.model.builder import save_pretrained
    from llava_restore.tools.make_tiny import build_tiny

    tok, m, proc = build_tiny(seed=0)
    with torch.no_grad():  # larger weights: answers vary with the image and the question
        for name, p in m.named_parameters():
            if not name.startswith("model.vision_tower") and p.dim() > 1 and "embed" not in name:
                p.mul_(10.0)
    out = tmp_path_factory.mktemp("slurm_model") / "tiny-llava"
    save_pretrained(m, str(out), tokenizer=tok, image_processor=proc, fmt="liuhaotian")
    return out


@pytest.fixture(scope="module")
def playground(tmp_path_factory) -> Path:
    from llava_restore.playground.config import Sizes
    from llava_restore.playground.data import build

    out = tmp_path_factory.mktemp("slurm_playground")
    build(out, seed=0, sizes=Sizes.from_dict({**Sizes.tiny().to_dict(), "pope_images": POPE_IMAGES}), progress=False,
          force=True)
    assert n_lines(out / "eval" / "pope" / "llava_pope_test.jsonl") == N_Q
    return out


@pytest.fixture(scope="module")
def reference(cluster, model, playground, tmp_path_factory) -> Path:
    """The run folder of a local single-process run (no Slurm), same flags."""
    out = tmp_path_factory.mktemp("slurm_reference")
    sh(cluster, sys.executable, "-m", "llava_restore.eval.run", "--benchmark", "pope", "--model-path", model,
       "--data-root", playground / "eval", "--output-root", out, "--device", "cpu", "--no-progress",
       "--batch-size", "4", *EVAL_FLAGS)
    (run_dir,) = (out / "pope").glob("*/*/result.json")
    return run_dir.parent


def submit_eval(env, model: Path, data_root: Path, out: Path, *flags: str, **extra_env) -> dict[str, str]:
    env = {**env, "MODEL_PATH": str(model), "DATA_ROOT": str(data_root), "OUTPUT_ROOT": str(out),
           "SBATCH_ARGS": " ".join(LOCAL_RES), **extra_env}
    proc = sh(env, "bash", SLURM_DIR / "submit_eval.sh", "pope", *EVAL_FLAGS, *flags)
    return dict(line.split("=", 1) for line in proc.stdout.split())


def run_dir_of(out: Path) -> Path:
    (run_dir,) = (p for p in (out / "pope").glob("*/*") if p.is_dir())
    return run_dir


def qids(path: Path) -> list[int]:
    return [json.loads(line)["question_id"] for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- eval
def test_sharded_eval_equals_local_run(cluster, model, playground, reference, tmp_path):
    jobs = submit_eval(cluster, model, playground / "eval", tmp_path, "--batch-size", "4", NUM_CHUNKS="2")
    logs = tmp_path / "slurm-logs"
    done = wait_jobs(cluster, jobs["array_job"], jobs["finalize_job"], logs=logs)
    assert done[jobs["array_job"]] == {"0": "COMPLETED", "1": "COMPLETED"}, log_tails(logs)
    assert list(done[jobs["finalize_job"]].values()) == ["COMPLETED"], log_tails(logs)
    run_dir = run_dir_of(tmp_path)
    assert run_dir.name == reference.name  # same identity -> same folder name
    ids = qids(playground / "eval" / "pope" / "llava_pope_test.jsonl")
    shard0, shard1 = (qids(run_dir / "shards" / f"2_{i}.jsonl") for i in (0, 1))
    assert shard0 == ids[: N_Q // 2] and shard1 == ids[N_Q // 2:]  # LLaVA's split: halves, in file order
    assert (run_dir / "answers.jsonl").read_bytes() == (reference / "answers.jsonl").read_bytes()
    got, ref = (json.loads((d / "result.json").read_text()) for d in (run_dir, reference))
    assert got["metrics"] == ref["metrics"] and got["n_answered"] == N_Q and got["num_chunks"] == 2
    for i in (0, 1):  # each shard ran as its own array task
        assert f"shard {i}/2" in (logs / f"eval-pope_{jobs['array_job']}_{i}.out").read_text()


def test_failed_shard_blocks_merge_then_resubmission_completes(cluster, model, playground, reference, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(playground / "eval" / "pope", data / "pope")
    qfile = data / "pope" / "llava_pope_test.jsonl"
    good = qfile.read_text()
    questions = [json.loads(line) for line in good.splitlines()]
    bad_q = questions[-1]  # in shard 1 (every image is also used by shard 0, so one question points elsewhere)
    missing = data / "pope" / "val2014" / "missing.png"
    qfile.write_text(good.replace(json.dumps(bad_q), json.dumps({**bad_q, "image": missing.name})))
    out = tmp_path / "runs"
    logs = out / "slurm-logs"
    jobs = submit_eval(cluster, model, data, out, "--batch-size", "4", NUM_CHUNKS="2")
    done = wait_jobs(cluster, jobs["array_job"], jobs["finalize_job"], logs=logs)
    assert done[jobs["array_job"]] == {"0": "COMPLETED", "1": "FAILED"}, log_tails(logs)
    # afterok can never be satisfied: the merge job is cancelled without running
    (final,) = job_records(cluster, jobs["finalize_job"])
    assert final["JobState"] == "CANCELLED" and final["Reason"] == "DependencyNeverSatisfied", final
    assert not list(logs.glob("eval-pope-finalize_*.out"))
    run_dir = run_dir_of(out)
    assert not (run_dir / "answers.jsonl").exists() and not (run_dir / "result.json").exists()
    failed_log = (logs / f"eval-pope_{jobs['array_job']}_1.out").read_text()
    assert str(missing) in failed_log and f"question {bad_q['question_id']}" in failed_log
    # the question file is fixed; resubmitting shard 1 alone (and the merge) completes the run
    qfile.write_text(good)
    again = submit_eval(cluster, model, data, out, "--batch-size", "4", NUM_CHUNKS="2", SHARDS="1")
    done = wait_jobs(cluster, again["array_job"], again["finalize_job"], logs=logs)
    assert done[again["array_job"]] == {"1": "COMPLETED"}, log_tails(logs)
    assert list(done[again["finalize_job"]].values()) == ["COMPLETED"], log_tails(logs)
    assert (run_dir / "answers.jsonl").read_bytes() == (reference / "answers.jsonl").read_bytes()
    assert json.loads((run_dir / "result.json").read_text())["n_answered"] == N_Q


def test_requeued_shard_resumes_without_duplicates_or_gaps(cluster, model, playground, reference, tmp_path):
    jobs = submit_eval(cluster, model, playground / "eval", tmp_path, "--batch-size", "1", NUM_CHUNKS="2")
    logs = tmp_path / "slurm-logs"
    shard0 = wait_for(lambda: next((tmp_path / "pope").glob("*/*/shards/2_0.jsonl"), None), "shard 0's answers file")
    wait_for(lambda: n_lines(shard0) >= 1, "shard 0's first answer")
    (task0,) = (r for r in job_records(cluster, jobs["array_job"]) if r.get("ArrayTaskId") == "0")
    # freeze it to check that it is mid-run, then requeue it running (as preemption does)
    sh(cluster, "scontrol", "suspend", task0["JobId"])
    at_kill = n_lines(shard0)
    assert 1 <= at_kill < N_Q // 2, f"shard 0 had {at_kill} answers when suspended: not mid-run"
    sh(cluster, "scontrol", "resume", task0["JobId"])  # (a job requeued while suspended would be held)
    sh(cluster, "scontrol", "requeue", task0["JobId"])
    done = wait_jobs(cluster, jobs["array_job"], jobs["finalize_job"], logs=logs)
    assert done[jobs["array_job"]] == {"0": "COMPLETED", "1": "COMPLETED"}, log_tails(logs)
    assert list(done[jobs["finalize_job"]].values()) == ["COMPLETED"], log_tails(logs)
    (task0,) = (r for r in job_records(cluster, jobs["array_job"]) if r.get("ArrayTaskId") == "0")
    assert task0["Restarts"] == "1"
    log0 = (logs / f"eval-pope_{jobs['array_job']}_0.out").read_text()  # both attempts (--open-mode=append)
    assert "(restart 0)" in log0 and "(restart 1)" in log0
    before, now = map(int, re.search(r"shard 0/2: (\d+) answered now, (\d+) before", log0).groups()[::-1])
    assert before >= at_kill and before + now == N_Q // 2
    run_dir = run_dir_of(tmp_path)
    ids = qids(playground / "eval" / "pope" / "llava_pope_test.jsonl")
    assert qids(run_dir / "answers.jsonl") == ids  # no duplicates, no gaps
    assert (run_dir / "answers.jsonl").read_bytes() == (reference / "answers.jsonl").read_bytes()


# ----------------------------------------------------------------------------- fine-tuning
FT_STEPS = 16


def test_finetune_two_srun_ranks_requeued_resumes(cluster, model, playground, tmp_path):
    """finetune.sbatch: 2 Slurm tasks = 2 DeepSpeed ZeRO-2 ranks on CPU (gloo), LoRA steps with
    DivPrune-64 + RESTORE; requeued after its first checkpoint, it resumes from the newest one."""
    out, log = tmp_path / "lora", tmp_path / "finetune.out"
    env = {"MODEL_PATH": model, "DATA_PATH": playground / "train" / "llava_playground_train.json",
           "IMAGE_FOLDER": playground, "OUTPUT_DIR": out, "DS_CONFIG": "./scripts/zero2.json"}
    export = "ALL," + ",".join(f"{k}={v}" for k, v in env.items())
    job = sh(cluster, "sbatch", "--parsable", "--ntasks-per-node=2", "--gres=none", "--mem=4G", "--cpus-per-task=1",
             f"--output={log}", f"--export={export}", SLURM_DIR / "finetune.sbatch",
             f"max_steps={FT_STEPS}", "save_steps=2", "micro_batch_size=2", "lora_r=4", "lora_alpha=8",
             "report_to=none", "--reduction", "divprune", "--n-vis", "64", "--restore").stdout.strip()

    def first_checkpoint():
        return [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]

    wait_for(first_checkpoint, "the first complete checkpoint", poll=0.02)
    sh(cluster, "scontrol", "suspend", job)
    seen = max(int(p.name.split("-")[1]) for p in first_checkpoint())
    assert seen < FT_STEPS and not (out / "trainer_state.json").exists(), "the job finished before the requeue"
    sh(cluster, "scontrol", "resume", job)
    sh(cluster, "scontrol", "requeue", job)
    done = wait_jobs(cluster, job, logs=tmp_path)
    assert done[job] == {job: "COMPLETED"}, log.read_text()[-3000:]
    (rec,) = job_records(cluster, job)
    assert rec["Restarts"] == "1"
    text = log.read_text()  # both attempts (--open-mode=append)
    assert "(restart 0): srun on 1 node(s)" in text and "(restart 1): srun on 1 node(s)" in text
    resumed = int(re.search(r"resumed from \S+checkpoint-(\d+) at step (\d+)", text).group(2))
    assert seen <= resumed < FT_STEPS
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["global_step"] == FT_STEPS
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, FT_STEPS + 1))  # the killed attempt's extra lines were dropped
    assert (out / "adapter_model.safetensors").is_file() and (out / f"checkpoint-{FT_STEPS}" / "trainer_state.json").is_file()


@pytest.mark.parametrize("launcher,ds_config", [("torchrun", "none"), ("deepspeed", "./scripts/zero3.json")])
def test_finetune_one_task_per_node_launchers(cluster, model, playground, tmp_path, launcher, ds_config):
    """LAUNCHER=torchrun (plain DDP) and LAUNCHER=deepspeed (ZeRO-3): one Slurm task on the node
    starts GPUS_PER_NODE=2 ranks (on CPU, gloo)."""
    out, log = tmp_path / "lora", tmp_path / "finetune.out"
    env = {"MODEL_PATH": model, "DATA_PATH": playground / "train" / "llava_playground_train.json",
           "IMAGE_FOLDER": playground, "OUTPUT_DIR": out, "DS_CONFIG": ds_config, "LAUNCHER": launcher,
           "GPUS_PER_NODE": 2}
    export = "ALL," + ",".join(f"{k}={v}" for k, v in env.items())
    job = sh(cluster, "sbatch", "--parsable", "--ntasks-per-node=1", "--cpus-per-task=2", "--gres=none", "--mem=4G",
             f"--output={log}", f"--export={export}", SLURM_DIR / "finetune.sbatch",
             "max_steps=2", "save_steps=2", "micro_batch_size=2", "lora_r=4", "lora_alpha=8", "report_to=none").stdout.strip()
    done = wait_jobs(cluster, job, logs=tmp_path)
    assert done[job] == {job: "COMPLETED"}, log.read_text()[-3000:]
    assert f"{launcher} on 1 node(s)" in log.read_text()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["global_step"] == 2
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and (out / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------- ablations
def test_ablation_grid_through_slurm(cluster, model, playground, reference, tmp_path):
    out = tmp_path / "ablations"
    grid = REPO / "ablations" / "smoke.yaml"  # the full-token run and DivPrune+RESTORE at 64
    common = [sys.executable, "-m", "llava_restore.ablate", grid, "--benchmarks", "pope", "--out", out,
              "--model-path", model, "--set", f"eval.data_root={playground / 'eval'}", "--set", "eval.max_new_tokens=3",
              "--set", "eval.device=cpu", "--set", "eval.batch_size=4"]
    proc = sh(cluster, *common, "--launcher", "slurm", f"--sbatch-args={' '.join(LOCAL_RES)}")
    job = re.search(r"submitted array job (\d+)", proc.stdout).group(1)
    logs = out / "grids" / "smoke" / "slurm"
    done = wait_jobs(cluster, job, logs=logs)
    assert done[job] == {"0": "COMPLETED", "1": "COMPLETED"}, log_tails(logs)
    assert "nothing to run" in sh(cluster, *common, "--launcher", "slurm", "--dry-run").stdout  # both finished
    sh(cluster, *common, "--report-only")
    (restore_run,) = (out / "pope").glob("*/divprune-n64-restore-*")
    assert (restore_run / "answers.jsonl").read_bytes() == (reference / "answers.jsonl").read_bytes()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = out / "grids" / "smoke" / "tb"
    runs = sorted(p for p in tb.iterdir() if p.is_dir())
    assert len(runs) == 2
    f1 = set()
    for run in runs:
        acc = EventAccumulator(str(run))
        acc.Reload()
        f1.add(round(acc.Scalars("pope/mean_f1")[0].value, 4))
    results = [json.loads(p.read_text())["metrics"]["mean_f1"] for p in (out / "pope").glob("*/*/result.json")]
    assert len(results) == 2 and f1 == {round(v, 4) for v in results}
