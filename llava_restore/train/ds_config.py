"""Fill a DeepSpeed JSON config's ``"auto"`` fields from the TrainConfig.

The trainer builds the optimizer (AdamW) and the LR schedule itself, so the JSON must not carry
``optimizer``/``scheduler`` sections.  Explicit numbers that contradict the TrainConfig fail.
"""
from __future__ import annotations

import json
import os

from .config import TrainConfig


def _auto_values(cfg: TrainConfig, world_size: int, hidden_size: int) -> dict[str, object]:
    """Dotted key -> value for every field that may be ``"auto"``."""
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "bf16.enabled": cfg.precision == "bf16",
        "fp16.enabled": cfg.precision == "fp16",
        # sizes HF Trainer derives from the hidden size
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }


# fields that must agree with the TrainConfig when they are given as numbers
_MUST_MATCH = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
               "bf16.enabled", "fp16.enabled")


def load_ds_config(path: str, cfg: TrainConfig, world_size: int, hidden_size: int) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DeepSpeed config not found: {path}")
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    for section in ("optimizer", "scheduler"):
        if section in raw:
            raise ValueError(f"{path}: remove the {section!r} section; the trainer builds AdamW and the "
                             f"{cfg.lr_scheduler} schedule from TrainConfig (lr, weight_decay, warmup_ratio, ...)")
    values = _auto_values(cfg, world_size, hidden_size)
    for key in ("bf16.enabled", "fp16.enabled"):  # sections absent from the file are added
        section = key.split(".")[0]
        raw.setdefault(section, {}).setdefault("enabled", "auto")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "gradient_clipping"):
        raw.setdefault(key, "auto")

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            dotted = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, dotted + ".")
            elif v == "auto":
                if dotted not in values:
                    raise ValueError(f"{path}: {dotted} is 'auto' but the trainer has no value for it; "
                                     f"'auto' is supported for {sorted(values)}")
                node[k] = values[dotted]
            elif dotted in _MUST_MATCH and v != values[dotted]:
                raise ValueError(f"{path}: {dotted}={v!r} contradicts the training config ({values[dotted]!r}); "
                                 f"set it to \"auto\"")

    walk(raw, "")
    return raw
