"""Typed training config (``TrainConfig``) and its command line.

The command line takes ``key=value`` overrides (``lr=1e-4 reduction.n_vis=64``), ``--config FILE.yaml``,
the reduction flags shared with eval (``--reduction divprune --n-vis 64 --restore``), and LLaVA's
``train_mem.py`` flags where they mean the same thing here (``--model_name_or_path``,
``--learning_rate``, ``--per_device_train_batch_size``, ``--bf16 True``, ...).  Every TrainConfig
field is also a flag (``--save_steps 50``).  Typos fail naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from llava_restore.reduction.config import ReductionConfig

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULERS = ("cosine", "linear", "constant")
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    # --- model and data
    model_path: str = MISSING  # liuhaotian/llava-hf folder (or a LoRA folder over model_base)
    model_base: Optional[str] = None  # only when model_path is a LoRA folder
    vision_tower: Optional[str] = None  # local folder replacing the config's mm_vision_tower
    data_path: str = MISSING  # conversation JSON (llava_v1_5_mix665k format)
    image_folder: str = ""
    output_dir: str = MISSING
    conv_mode: str = "vicuna_v1"
    max_length: int = 2048  # text tokens (the image placeholder counts as one), as LLaVA's model_max_length
    image_aspect_ratio: Optional[str] = None  # None: the model config's (LLaVA-1.5: pad)
    # --- visual-token reduction: the same config eval uses, so training sees what inference sees
    reduction: ReductionConfig = field(default_factory=ReductionConfig)
    attn_implementation: str = "sdpa"  # backend when reduction.method is none
    # --- LoRA (peft) on the decoder's linear layers; the vision tower is always frozen
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(DECODER_LINEARS))
    tune_mm_projector: bool = False
    mm_projector_lr: Optional[float] = None  # None: lr
    # --- optimisation
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "cosine"  # cosine|linear|constant, after linear warm-up
    warmup_ratio: float = 0.03
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    micro_batch_size: int = 16  # per device (LLaVA's per_device_train_batch_size)
    grad_accum: int = 1
    precision: str = "fp32"  # fp32|bf16|fp16
    gradient_checkpointing: bool = False
    deepspeed: Optional[str] = None  # a ZeRO config (scripts/zero2.json, zero3.json); None: plain torch
    num_workers: int = 0
    # --- checkpoints, logging
    save_steps: int = 500
    save_total_limit: Optional[int] = None  # keep only the newest k checkpoint-* folders
    resume: bool = False  # continue from the newest checkpoint in output_dir
    stop_after_steps: Optional[int] = None  # stop (as if preempted) after this step, checkpoint written
    logging_steps: int = 1
    tensorboard_dir: Optional[str] = None  # None: <output_dir>/runs
    report_to: str = "tensorboard"  # tensorboard|none
    seed: int = 42
    device: Optional[str] = None  # None: cuda:<local rank> when CUDA is present, else cpu

    def validate(self) -> None:
        def bad(key, why):
            raise ValueError(f"TrainConfig.{key}={getattr(self, key)!r}: {why}")

        if self.precision not in PRECISIONS:
            bad("precision", f"not one of {list(PRECISIONS)}")
        if self.lr_scheduler not in SCHEDULERS:
            bad("lr_scheduler", f"not one of {list(SCHEDULERS)}")
        if self.report_to not in ("tensorboard", "none"):
            bad("report_to", "not one of ['tensorboard', 'none']")
        for key in ("micro_batch_size", "grad_accum", "lora_r", "save_steps", "logging_steps", "max_length"):
            if getattr(self, key) < 1:
                bad(key, "must be >= 1")
        if self.max_steps <= 0 and self.epochs <= 0:
            bad("epochs", "must be > 0 when max_steps <= 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            bad("warmup_ratio", "must be in [0, 1)")
        if not 0.0 <= self.lora_dropout < 1.0:
            bad("lora_dropout", "must be in [0, 1)")
        if not self.lora_target_modules:
            bad("lora_target_modules", "is empty")
        unknown = [m for m in self.lora_target_modules if m not in DECODER_LINEARS]
        if unknown:
            bad("lora_target_modules", f"{unknown} are not decoder linear layers; known: {list(DECODER_LINEARS)}")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            bad("stop_after_steps", "must be >= 1")
        self.reduction.validate()


# LLaVA train_mem.py flag -> TrainConfig key
LLAVA_FLAGS = {
    "model_name_or_path": "model_path",
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "model_max_length": "max_length",
    "version": "conv_mode",
    "lr_scheduler_type": "lr_scheduler",
    "dataloader_num_workers": "num_workers",
    "lora_target": "lora_target_modules",
    "logging_dir": "tensorboard_dir",
}
# LLaVA flags whose only meaning here is the value below; any other value is an error.
LLAVA_FIXED = {
    "lora_enable": "true",
    "mm_use_im_start_end": "false",
    "mm_use_im_patch_token": "false",
    "lazy_preprocess": "true",
    "evaluation_strategy": "no",
    "save_strategy": "steps",
    "group_by_modality_length": "false",
}
# Reduction flags shared with eval (llava_restore.reduction.cli).
REDUCTION_FLAGS = {"reduction": "reduction.method", "n_vis": "reduction.n_vis"}
STANDALONE = {"restore": "reduction.restore", "resume": "resume", "gradient_checkpointing": "gradient_checkpointing",
              "tune_mm_projector": "tune_mm_projector"}
BOOL_WORDS = {"true": "true", "false": "false", "1": "true", "0": "false"}
# launcher-injected arguments, read from the environment instead
LAUNCHER_ARGS = ("local_rank",)


def _dotlist_from_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split argv into (config files, key=value items)."""
    files, items, i = [], [], 0

    def is_flag(j):
        return j < len(argv) and argv[j].startswith("--")

    while i < len(argv):
        tok = argv[i]
        i += 1
        if not tok.startswith("--"):
            if "=" not in tok:
                raise ValueError(f"argument {tok!r} is neither --flag nor key=value")
            items.append(tok)
            continue
        name, has_inline, inline = tok[2:].partition("=")
        key = name.replace("-", "_")
        if key in STANDALONE or key in LAUNCHER_ARGS:  # value optional
            if has_inline:
                val = inline
            elif i < len(argv) and argv[i].lower() in BOOL_WORDS or key in LAUNCHER_ARGS and i < len(argv) and not is_flag(i):
                val, i = argv[i], i + 1
            else:
                val = "true"
            if key in STANDALONE:
                items.append(f"{STANDALONE[key]}={BOOL_WORDS.get(val.lower(), val)}")
            continue
        if key == "reduction_opts":  # --reduction-opts k=v k=v ...
            opts = [inline] if has_inline else []
            while not has_inline and i < len(argv) and not is_flag(i) and "=" in argv[i]:
                opts.append(argv[i])
                i += 1
            items.extend(f"reduction.{o}" for o in opts)
            continue
        if has_inline:
            val = inline
        elif i < len(argv) and not is_flag(i):
            val, i = argv[i], i + 1
        else:
            raise ValueError(f"flag --{name} needs a value")
        if key == "config":
            files.append(val)
        elif key in ("bf16", "fp16", "tf32"):
            on = BOOL_WORDS.get(val.lower())
            if on is None:
                raise ValueError(f"flag --{name} takes True/False, got {val!r}")
            if key != "tf32" and on == "true":
                items.append(f"precision={key}")
        elif key in LLAVA_FIXED:
            if BOOL_WORDS.get(val.lower(), val.lower()) != LLAVA_FIXED[key]:
                raise ValueError(f"flag --{name} {val}: only {LLAVA_FIXED[key]!r} is supported by this trainer")
        else:
            key = LLAVA_FLAGS.get(key, REDUCTION_FLAGS.get(key, key))
            if key == "lora_target_modules" and not val.startswith("["):
                val = "[" + val + "]"
            items.append(f"{key}={val}")
    return files, items


def parse_train_config(argv: list[str]) -> TrainConfig:
    """Build a validated TrainConfig from argv; unknown keys fail naming the key."""
    files, items = _dotlist_from_argv(list(argv))
    conf = OmegaConf.structured(TrainConfig)
    try:
        for path in files:
            conf = OmegaConf.merge(conf, OmegaConf.load(path))
        conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(items))
        missing = sorted(OmegaConf.missing_keys(conf))
        if missing:
            raise ValueError(f"TrainConfig: required keys not set: {missing} (e.g. {missing[0]}=...)")
        cfg: TrainConfig = OmegaConf.to_object(conf)
    except (ConfigKeyError, ValidationError) as exc:
        key = getattr(exc, "full_key", None)
        raise ValueError(f"bad training option {key!r}: {str(exc).splitlines()[0]}") from exc
    cfg.validate()
    return cfg


def to_yaml(cfg: TrainConfig, reduction: ReductionConfig | None = None) -> str:
    """The config as YAML; ``reduction`` (the resolved one) replaces the raw reduction block."""
    conf = OmegaConf.structured(cfg)
    if reduction is not None:
        conf.reduction = OmegaConf.structured(reduction)
    return OmegaConf.to_yaml(conf)
