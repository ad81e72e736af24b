"""Deterministic data order, RNG snapshots and trainer-state files, so ``--resume`` continues the
loss/step sequence exactly.

Data order: one seeded permutation per epoch, shared by all ranks; rank r takes every world-th
index (the list padded by wrapping to a multiple of the world size, as DistributedSampler does),
then consecutive micro-batches.  A step consumes ``grad_accum`` micro-batches, so the position in
the data is (epoch, micro-batches consumed in that epoch).
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass

import numpy as np
import torch

CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def epoch_micro_batches(n: int, seed: int, epoch: int, world: int, rank: int, micro: int) -> list[list[int]]:
    """This rank's micro-batches (lists of dataset indices) for ``epoch``."""
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    total = math.ceil(n / world) * world
    perm = (perm * math.ceil(total / n))[:total]
    mine = perm[rank::world]
    return [mine[i:i + micro] for i in range(0, len(mine), micro)]


def steps_per_epoch(n: int, world: int, micro: int, grad_accum: int) -> int:
    n_micro = math.ceil(math.ceil(n / world) / micro)
    steps = n_micro // grad_accum
    if steps < 1:
        raise ValueError(f"{n} training records give no full step: need at least world_size*micro_batch_size*"
                         f"(grad_accum-1)+1 = {world * micro * (grad_accum - 1) + 1} records per epoch "
                         f"(world_size={world}, micro_batch_size={micro}, grad_accum={grad_accum})")
    return steps


@dataclass
class TrainerState:
    global_step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0  # micro-batches of ``epoch`` consumed (per rank)
    n_truncated: int = 0  # records truncated to max_length so far (all ranks)
    tokens_seen: int = 0  # LLM input tokens so far (all ranks)
    # the data order depends on these; resuming with other values would change it
    seed: int = 0
    world_size: int = 1
    micro_batch_size: int = 1
    grad_accum: int = 1
    total_steps: int = 0

    def check_compatible(self, other: "TrainerState", where: str) -> None:
        for key in ("seed", "world_size", "micro_batch_size", "grad_accum", "total_steps"):
            a, b = getattr(self, key), getattr(other, key)
            if a != b:
                raise ValueError(f"cannot resume from {where}: it was written with {key}={a}, this run has {key}={b} "
                                 f"(the data order and schedule would differ)")


def rng_snapshot() -> dict:
    snap = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def restore_rng(snap: dict) -> None:
    random.setstate(snap["python"])
    np.random.set_state(snap["numpy"])
    torch.set_rng_state(snap["torch"])
    if "cuda" in snap and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])


def rng_file(folder: str, rank: int) -> str:
    return os.path.join(folder, f"rng_state_{rank}.pth")


def save_rng(folder: str, rank: int) -> None:
    torch.save(rng_snapshot(), rng_file(folder, rank))


def load_rng(folder: str, rank: int) -> None:
    path = rng_file(folder, rank)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: the checkpoint was written by fewer ranks than this run has")
    restore_rng(torch.load(path, map_location="cpu", weights_only=False))


def write_state(folder: str, state: TrainerState) -> None:
    """Written last, atomically: its presence marks the checkpoint complete."""
    tmp = os.path.join(folder, STATE_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(asdict(state), f, indent=2)
    os.replace(tmp, os.path.join(folder, STATE_FILE))


def read_state(folder: str) -> TrainerState:
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {folder} is not a complete checkpoint")
    with open(path) as f:
        return TrainerState(**json.load(f))


def complete_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, folder) of every complete checkpoint-* folder, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = CKPT_RE.match(name)
        folder = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(folder, STATE_FILE)):
            found.append((int(m.group(1)), folder))
    return sorted(found)


def latest_checkpoint(output_dir: str) -> str | None:
    ckpts = complete_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def prune_checkpoints(output_dir: str, keep: int | None) -> None:
    if keep is None:
        return
    ckpts = complete_checkpoints(output_dir)
    for _, folder in ckpts[: max(0, len(ckpts) - keep)]:
        shutil.rmtree(folder)
