"""Reading and writing checkpoint weights (safetensors / .bin, single file or sharded)."""
from __future__ import annotations

import json
import os
import re

import torch
from safetensors.torch import load_file, save_file

from .config import CheckpointError

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _load_one(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"missing weight shard: {path}")
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated files: name the file, keep the cause
        raise CheckpointError(f"cannot read weight file {path}: {exc}") from exc


def load_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder; a missing shard or missing weights fails naming the file."""
    for name in _INDEX_FILES:
        idx = os.path.join(folder, name)
        if os.path.isfile(idx):
            with open(idx) as f:
                weight_map = json.load(f).get("weight_map")
            if not weight_map:
                raise CheckpointError(f"{idx} has no weight_map")
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
            if missing:
                raise CheckpointError(f"{folder}: {len(missing)} shard(s) listed in {name} are missing: {missing}")
            sd: dict[str, torch.Tensor] = {}
            for s in shards:
                sd.update(_load_one(os.path.join(folder, s)))
            absent = sorted(set(weight_map) - set(sd))
            if absent:
                raise CheckpointError(f"{folder}: tensors listed in {name} not found in the shards: {absent[:10]}")
            return sd
    for name in _WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return _load_one(path)
    raise CheckpointError(f"checkpoint folder {folder} has no weights "
                          f"(looked for {', '.join(_WEIGHT_FILES + _INDEX_FILES)})")


def save_state_dict(sd: dict[str, torch.Tensor], folder: str, max_shard_bytes: int | None = None) -> None:
    os.makedirs(folder, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    if max_shard_bytes is None or sum(v.numel() * v.element_size() for v in sd.values()) <= max_shard_bytes:
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if cur and size + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + nbytes
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
                   "weight_map": weight_map}, f, indent=2)


# ------------------------------------------------------------------ hf <-> liuhaotian key maps
_HF_RULES = [  # (llava-hf key pattern, our key template); both the legacy and the v5 layouts
    (r"^(?:model\.)?language_model\.model\.(.*)$", r"model.\1"),
    (r"^model\.language_model\.(.*)$", r"model.\1"),
    (r"^(?:language_model\.)?lm_head\.(.*)$", r"lm_head.\1"),
    (r"^(?:model\.)?multi_modal_projector\.linear_1\.(.*)$", r"model.mm_projector.0.\1"),
    (r"^(?:model\.)?multi_modal_projector\.linear_2\.(.*)$", r"model.mm_projector.2.\1"),
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.*)$", r"model.vision_tower.vision_tower.\1"),
]


def hf_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pat, rep in _HF_RULES:
            if re.match(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
        else:
            raise CheckpointError(f"unexpected tensor {k!r} in a llava-hf checkpoint")
    return out


def ours_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> the llava-hf layout transformers saves (language_model.model.*, vision_tower.*)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("model.mm_projector.0."):
            out["multi_modal_projector.linear_1." + k.split(".", 3)[3]] = v
        elif k.startswith("model.mm_projector.2."):
            out["multi_modal_projector.linear_2." + k.split(".", 3)[3]] = v
        elif k.startswith("model.vision_tower.vision_tower."):
            out["vision_tower." + k[len("model.vision_tower.vision_tower."):]] = v
        elif k.startswith("lm_head."):
            out["language_model." + k] = v
        elif k.startswith("model."):
            out["language_model." + k] = v
        else:
            raise CheckpointError(f"cannot map tensor {k!r} to the llava-hf layout")
    return out
