"""The typed schema of one ablation run: an ``eval`` section and a ``reduction`` section.

``reduction`` is :class:`llava_restore.reduction.ReductionConfig`; ``eval`` holds the settings the
evaluation CLI (``python -m llava_restore.eval.run``) takes besides the benchmark and the reduction.
Both are OmegaConf structured configs, so an unknown key or a mistyped value fails by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import List, Optional

from llava_restore.reduction.config import ReductionConfig

SECTIONS = ("eval", "reduction")


@dataclass
class EvalSettings:
    """eval.run's flags other than --benchmark and the reduction flags (None: eval.run's default)."""

    model_path: str = "./playground/cache/llava-playground"
    model_base: Optional[str] = None
    vision_tower: Optional[str] = None
    ckpt: Optional[str] = None  # model name in the run folder (default: LLaVA's name of model_path)
    conv_mode: str = "vicuna_v1"
    temperature: float = 0.0
    top_p: Optional[float] = None
    num_beams: int = 1
    max_new_tokens: Optional[int] = None  # None: the benchmark's LLaVA-1.5 value
    batch_size: int = 1
    vision_cache: int = 0  # eval.run --vision-cache: reuse tower outputs for repeated images (0 = off)
    device: Optional[str] = None  # None: cuda when available
    dtype: Optional[str] = None  # None: eval.run's auto (float16 on GPU, float32 on CPU)
    attn_impl: Optional[str] = None  # None: the reduction config's attn_backend
    num_chunks: int = 1  # shards, answered one after the other inside the run's task
    data_root: Optional[str] = None  # None: ./playground/data/eval
    extra_args: List[str] = field(default_factory=list)  # passed through verbatim to eval.run


@dataclass
class RunSettings:
    eval: EvalSettings = field(default_factory=EvalSettings)
    reduction: ReductionConfig = field(default_factory=ReductionConfig)


def section_fields() -> dict[str, list[str]]:
    return {"eval": [f.name for f in fields(EvalSettings)], "reduction": [f.name for f in fields(ReductionConfig)]}
