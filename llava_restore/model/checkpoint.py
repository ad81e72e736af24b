"""Reading and writing checkpoint weights (safetensors / .bin, single file or sharded), the
llava-hf <-> liuhaotian key maps, and the CLIP vision tower folder (``save_vision_tower``,
``load_vision_tower_folder``, ``load_vision_tower_weights``)."""
from __future__ import annotations

import json
import os
import re

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModel

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


def _weight_files(folder: str) -> tuple[list[str], str | None, dict[str, str] | None]:
    """(weight file paths, index file or None, the index's weight_map or None) of a checkpoint folder;
    a missing shard or a folder without weights fails naming the file."""
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
            return [os.path.join(folder, s) for s in shards], idx, weight_map
    for name in _WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return [path], None, None
    raise CheckpointError(f"checkpoint folder {folder} has no weights "
                          f"(looked for {', '.join(_WEIGHT_FILES + _INDEX_FILES)})")


def load_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder; a missing shard or missing weights fails naming the file."""
    files, idx, weight_map = _weight_files(folder)
    sd: dict[str, torch.Tensor] = {}
    for path in files:
        sd.update(_load_one(path))
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(sd))
        if absent:
            raise CheckpointError(f"{folder}: tensors listed in {os.path.basename(idx)} not found in the shards: "
                                  f"{absent[:10]}")
    return sd


def _tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in one weight file (safetensors: the header only)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"missing weight shard: {path}")
    if not path.endswith(".safetensors"):
        return {k: tuple(v.shape) for k, v in _load_one(path).items()}
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # corrupt/truncated header: name the file, keep the cause
        raise CheckpointError(f"cannot read weight file {path}: {exc}") from exc


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
    """Our keys -> the legacy llava-hf layout (language_model.model.*, multi_modal_projector.*,
    vision_tower.vision_model.*) that transformers 4.3x reads and 5.x converts on load."""
    out = {}
    for k, v in sd.items():
        if k.startswith("model.mm_projector.0."):
            out["multi_modal_projector.linear_1." + k.split(".", 3)[3]] = v
        elif k.startswith("model.mm_projector.2."):
            out["multi_modal_projector.linear_2." + k.split(".", 3)[3]] = v
        elif k.startswith("model.vision_tower.vision_tower."):
            out["vision_tower." + CLIP_VISION_PREFIX + _strip_vision_prefix(k[len("model.vision_tower.vision_tower."):])] = v
        elif k.startswith("lm_head."):
            out["language_model." + k] = v
        elif k.startswith("model."):
            out["language_model." + k] = v
        else:
            raise CheckpointError(f"cannot map tensor {k!r} to the llava-hf layout")
    return out


# ------------------------------------------------------------------ the CLIP vision tower folder
# transformers 5.x flattened CLIPVisionModel (``embeddings.*``, ``encoder.*`` at the top) and saves a
# freshly built one without a prefix; the 4.3x line (LLaVA pins 4.37.2) has a ``vision_model``
# sub-module and silently re-initialises a tower whose keys lack ``vision_model.``.  5.x reads both,
# so the prefixed layout is the one every release loads.
CLIP_VISION_PREFIX = "vision_model."
TOWER_WEIGHTS = "model.safetensors"
TOWER_CONFIG = "config.json"
TOWER_ARCHITECTURE = "CLIPVisionModel"
TOWER_MODEL_TYPE = "clip_vision_model"
# the other parts of a full CLIP checkpoint (model_type "clip"), which CLIPVisionModel does not use
_CLIP_NON_VISION = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
_ERROR_KEYS_SHOWN = 5  # keys listed per kind in a mismatch error


def _strip_vision_prefix(key: str) -> str:
    return key[len(CLIP_VISION_PREFIX):] if key.startswith(CLIP_VISION_PREFIX) else key


def _clip_vision_model(tower) -> CLIPVisionModel:
    """The CLIPVisionModel itself, given it or our CLIPVisionTower wrapper (``.vision_tower``)."""
    if isinstance(tower, CLIPVisionModel):
        return tower
    inner = getattr(tower, "vision_tower", None)
    if isinstance(inner, CLIPVisionModel):
        return inner
    raise TypeError(f"expected a CLIPVisionModel or a CLIPVisionTower, got {type(tower).__name__}")


def vision_tower_state_dict(tower) -> dict[str, torch.Tensor]:
    """The tower's tensors under the ``vision_model.``-prefixed names (CPU, contiguous)."""
    vm = _clip_vision_model(tower)
    return {CLIP_VISION_PREFIX + _strip_vision_prefix(k): v.detach().contiguous().cpu()
            for k, v in vm.state_dict().items()}


def vision_tower_config_dict(tower) -> dict:
    """config.json of a saved tower: every CLIPVisionConfig field, the architecture and model_type
    both the 4.3x and 5.x releases dispatch on, and the weights' dtype under both names
    (``torch_dtype`` for 4.3x, ``dtype`` for 5.x)."""
    vm = _clip_vision_model(tower)
    conf = vm.config.to_diff_dict()  # what save_pretrained writes: every CLIP field, no generic defaults
    dtype = str(next(vm.parameters()).dtype).removeprefix("torch.")
    conf.update(architectures=[TOWER_ARCHITECTURE], model_type=TOWER_MODEL_TYPE, torch_dtype=dtype, dtype=dtype)
    return conf


def save_vision_tower(tower, folder: str, image_processor=None) -> None:
    """Write a CLIP vision tower folder that transformers 4.3x and 5.x both load without
    re-initialising anything: ``model.safetensors`` with ``vision_model.``-prefixed keys,
    ``config.json`` (``CLIPVisionModel`` / ``clip_vision_model``) and, when given, the image
    processor's ``preprocessor_config.json``.  ``tower``: a CLIPVisionModel or our CLIPVisionTower.

    This is the one writer of tower folders (make_tiny, the trainers and merge_lora all save
    through ``builder.save_pretrained``, which calls it); do not use ``CLIPVisionModel.save_pretrained``.
    """
    os.makedirs(folder, exist_ok=True)
    stale = [n for n in _WEIGHT_FILES + _INDEX_FILES if n != TOWER_WEIGHTS and os.path.isfile(os.path.join(folder, n))]
    if stale:
        raise CheckpointError(f"{folder} already holds {stale}, which loaders would read instead of the new "
                              f"{TOWER_WEIGHTS}; remove them or save elsewhere")
    save_file(vision_tower_state_dict(tower), os.path.join(folder, TOWER_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(folder, TOWER_CONFIG), "w") as f:
        json.dump(vision_tower_config_dict(tower), f, indent=2, sort_keys=True)
    if image_processor is not None:
        image_processor.save_pretrained(folder)


def _check_tower_keys(folder: str, vm: CLIPVisionModel, full_clip: bool) -> dict[str, str]:
    """Compare the folder's tensors with ``vm``'s (either key layout); returns model key -> stored key.
    One CheckpointError names the weight file and every kind of mismatch."""
    files, idx, _ = _weight_files(folder)
    source = idx or files[0]
    expected = {_strip_vision_prefix(k): tuple(v.shape) for k, v in vm.state_dict().items()}
    buffers_not_saved = {_strip_vision_prefix(n) for n, _ in vm.named_buffers()} - set(expected)
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    for path in files:
        for k, shape in _tensor_shapes(path).items():
            if full_clip and k.startswith(_CLIP_NON_VISION):
                continue
            name = _strip_vision_prefix(k)
            if name in buffers_not_saved:  # e.g. embeddings.position_ids written by old releases
                continue
            if name in found:
                raise CheckpointError(f"vision tower checkpoint {source}: tensor {name!r} is stored twice "
                                      f"({found[name][0]!r} and {k!r})")
            found[name] = (k, shape)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(found[n][0] for n in set(found) - set(expected))
    wrong = sorted(f"{found[n][0]} {list(found[n][1])} != {list(expected[n])}"
                   for n in set(found) & set(expected) if found[n][1] != expected[n])
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} {v[:_ERROR_KEYS_SHOWN]}" for what, v in
                 (("missing tensor(s)", missing), ("unexpected tensor(s)", unexpected), ("wrong shape(s)", wrong)) if v]
        raise CheckpointError(f"vision tower checkpoint {source} does not match its config.json: " + "; ".join(parts))
    return {n: k for n, (k, _) in found.items()}


def _read_tower_config(folder: str) -> CLIPVisionConfig:
    path = os.path.join(folder, TOWER_CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(f"vision tower folder {folder} has no {TOWER_CONFIG}")
    return CLIPVisionConfig.from_pretrained(folder, local_files_only=True)


def _is_full_clip(folder: str) -> bool:
    """Whether the folder's config.json is a full CLIP model's (text + vision); False without one."""
    path = os.path.join(folder, TOWER_CONFIG)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("model_type") == "clip"


def load_vision_tower_folder(folder: str, torch_dtype=None) -> CLIPVisionModel:
    """A local CLIP vision tower folder -> CLIPVisionModel, whichever key layout it was saved in
    (``vision_model.``-prefixed as 4.3x and ``save_vision_tower`` write, or unprefixed as 5.x's
    own ``save_pretrained`` writes; a full CLIP checkpoint's text half is skipped).  A checkpoint
    that misses or adds tensors fails with one CheckpointError naming the file and the keys,
    instead of transformers' silent random initialisation."""
    config = _read_tower_config(folder)
    with torch.device("meta"):
        skeleton = CLIPVisionModel(config)
    _check_tower_keys(folder, skeleton, _is_full_clip(folder))
    model, info = CLIPVisionModel.from_pretrained(folder, dtype=torch_dtype, local_files_only=True,
                                                  output_loading_info=True)
    not_loaded = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if not_loaded:
        raise CheckpointError(f"vision tower folder {folder}: transformers did not load {not_loaded[:_ERROR_KEYS_SHOWN]}")
    return model


def load_vision_tower_weights(tower, folder: str) -> None:
    """Copy the weights of a saved tower folder (either key layout) into an existing tower
    (CLIPVisionModel or CLIPVisionTower), keeping its dtype and device; a tower that does not fit
    fails with one CheckpointError naming the file and the keys."""
    vm = _clip_vision_model(tower)
    if not os.path.isdir(folder):
        raise CheckpointError(f"vision tower folder not found: {folder}")
    stored = _check_tower_keys(folder, vm, _is_full_clip(folder))
    sd = load_state_dict(folder)
    own = {_strip_vision_prefix(k): k for k in vm.state_dict()}
    vm.load_state_dict({own[n]: sd[k] for n, k in stored.items()}, strict=True)


def assign_decoder_weights(model: torch.nn.Module, lm_sd: dict, dtype: torch.dtype, folder: str,
                           tie_word_embeddings: bool) -> None:
    """Load ``lm_sd`` into a meta-device ``model`` (assigning the tensors), after checking that its
    keys are exactly the model's (a tied ``lm_head`` may be absent); ties the head if asked."""
    expected = set(model.state_dict())
    if tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(lm_sd)), sorted(set(lm_sd) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not match the config: missing {missing[:10]} "
                              f"({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)})")
    model.load_state_dict({k: v.to(dtype) for k, v in lm_sd.items()}, strict=False, assign=True)
    if tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
