"""Checkpoint configs: liuhaotian ``llava_llama`` folders and llava-hf ``llava`` folders.

The format is decided from config fields (``model_type`` / ``architectures``), never from the path.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint folder that is missing files or has inconsistent contents."""


@dataclass
class TextConfig:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "TextConfig":
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if key not in d:
                raise CheckpointError(f"{where}: config lacks required field {key!r}")
        heads = d["num_attention_heads"]
        rope = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling")
        if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
            raise CheckpointError(f"{where}: rope_scaling {scaling} is not supported (LLaVA-1.5 uses none)")
        if rope.get("rope_type", "default") != "default":
            raise CheckpointError(f"{where}: rope_parameters {rope} is not supported (LLaVA-1.5 uses default RoPE)")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"{where}: hidden_act {act!r} is not supported (LLaMA uses silu)")
        return cls(
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            vocab_size=d["vocab_size"],
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(d.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
            hidden_act=act,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=d.get("eos_token_id", 2),
            pad_token_id=d.get("pad_token_id"),
        )


@dataclass
class LlavaConfig:
    """Everything the model needs, normalised from either checkpoint format."""

    text: TextConfig
    mm_vision_tower: str | None
    mm_hidden_size: int
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str = "pad"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    image_token_index: int | None = None  # hf format: id of "<image>" in the vocabulary
    vision_config: dict | None = None  # hf format: CLIPVisionConfig kwargs (weights in the checkpoint)
    source_format: str = "liuhaotian"
    raw: dict = field(default_factory=dict)

    def to_liuhaotian_dict(self) -> dict:
        """config.json for a liuhaotian-format folder (model_type ``llava_llama``)."""
        t = self.text
        out = {k: v for k, v in self.raw.items() if self.source_format == "liuhaotian"}
        out.update(
            architectures=["LlavaLlamaForCausalLM"],
            model_type="llava_llama",
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads,
            head_dim=t.head_dim,
            vocab_size=t.vocab_size,
            rms_norm_eps=t.rms_norm_eps,
            rope_theta=t.rope_theta,
            attention_bias=t.attention_bias,
            mlp_bias=t.mlp_bias,
            hidden_act=t.hidden_act,
            tie_word_embeddings=t.tie_word_embeddings,
            max_position_embeddings=t.max_position_embeddings,
            bos_token_id=t.bos_token_id,
            eos_token_id=t.eos_token_id,
            pad_token_id=t.pad_token_id,
            mm_vision_tower=self.mm_vision_tower,
            mm_hidden_size=self.mm_hidden_size,
            mm_projector_type=self.mm_projector_type,
            mm_vision_select_layer=self.mm_vision_select_layer,
            mm_vision_select_feature=self.mm_vision_select_feature,
            image_aspect_ratio=self.image_aspect_ratio,
            mm_use_im_start_end=self.mm_use_im_start_end,
            mm_use_im_patch_token=self.mm_use_im_patch_token,
        )
        out.pop("rope_parameters", None)
        out.pop("rope_scaling", None)
        return out


def read_config_json(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint folder {folder} has no config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def detect_format(cfg: dict) -> str:
    """'liuhaotian' | 'hf' | 'lora', from config fields only."""
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type == "llava_llama" or "LlavaLlamaForCausalLM" in archs:
        return "liuhaotian"
    if model_type == "llava" or "LlavaForConditionalGeneration" in archs:
        return "hf"
    raise CheckpointError(
        f"unrecognised checkpoint config: model_type={model_type!r}, architectures={archs!r}; "
        "expected llava_llama (liuhaotian) or llava (llava-hf)"
    )


def parse_config(cfg: dict, where: str) -> LlavaConfig:
    fmt = detect_format(cfg)
    if fmt == "liuhaotian":
        if "mm_hidden_size" not in cfg:
            raise CheckpointError(f"{where}: llava_llama config lacks 'mm_hidden_size'")
        tower = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
        return LlavaConfig(
            text=TextConfig.from_dict(cfg, where),
            mm_vision_tower=tower,
            mm_hidden_size=cfg["mm_hidden_size"],
            mm_projector_type=cfg.get("mm_projector_type", "linear"),
            mm_vision_select_layer=cfg.get("mm_vision_select_layer", -2),
            mm_vision_select_feature=cfg.get("mm_vision_select_feature", "patch"),
            image_aspect_ratio=cfg.get("image_aspect_ratio", "square"),
            mm_use_im_start_end=bool(cfg.get("mm_use_im_start_end", False)),
            mm_use_im_patch_token=bool(cfg.get("mm_use_im_patch_token", False)),
            source_format="liuhaotian",
            raw=dict(cfg),
        )
    text = cfg.get("text_config")
    vision = cfg.get("vision_config")
    if not text or not vision:
        raise CheckpointError(f"{where}: llava (hf) config needs text_config and vision_config")
    strategy = cfg.get("vision_feature_select_strategy", "default")
    layer = cfg.get("vision_feature_layer", -2)
    if isinstance(layer, list):
        raise CheckpointError(f"{where}: multi-layer vision_feature_layer {layer} is not supported")
    act = cfg.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{where}: projector_hidden_act {act!r} is not supported (mlp2x_gelu)")
    if not cfg.get("multimodal_projector_bias", True):
        raise CheckpointError(f"{where}: projector without bias is not supported")
    vision = {k: v for k, v in vision.items() if k not in ("model_type", "transformers_version")}
    return LlavaConfig(
        text=TextConfig.from_dict(text, where + " text_config"),
        mm_vision_tower=None,
        mm_hidden_size=vision["hidden_size"],
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=layer,
        mm_vision_select_feature="patch" if strategy == "default" else "cls_patch",
        image_aspect_ratio="pad",
        image_token_index=cfg.get("image_token_index", cfg.get("image_token_id")),
        vision_config=vision,
        source_format="hf",
        raw=dict(cfg),
    )
