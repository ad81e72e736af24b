"""Qwen3-VL (the issue's stretch): ``qwen2_5_vl.py``'s model with Qwen3-VL's three differences.

- Attention: per-head RMSNorm on q and k before RoPE (``q_norm``, ``k_norm``), biases per
  ``attention_bias`` (false), ``head_dim`` from the config.
- Interleaved M-RoPE: frequency k is h for k = 1, 4, ... < 3 s_h, w for k = 2, 5, ... < 3 s_w,
  t otherwise (``reduction/mrope.py::section_axes(interleaved=True)``); image ids are as in
  Qwen2.5-VL, so RESTORE's positions and distance term carry over with that axis map.
- DeepStack: the tower also returns merged features of some of its layers
  (``deepstack_visual_indexes``); level i is added to the output of decoder layer i at the visual
  tokens. With a reduction each level is reduced like the image's tokens (a merged token gets the
  mean of its members' features).

The vision encoder is transformers' ``Qwen3VLVisionModel`` (full attention, no windows: tower order
is raster order).  Parameter names follow transformers' layout (``model.language_model.*``,
``model.visual.*``, ``lm_head``), mapped by ``qwen2_5_vl.hf_to_ours``.
"""
from __future__ import annotations

from typing import Any

import torch

from .config import CheckpointError, TextConfig
from .llama import LlamaAttention, LlamaDecoderLayer, RMSNorm, apply_rope
from .qwen2_5_vl import Qwen2_5_VLForRestore, QwenVLConfig, TowerSpec, hf_to_ours, load_into, section_axes


def is_qwen3_vl_config(raw: dict) -> bool:
    return raw.get("model_type") == "qwen3_vl"


def parse_qwen3_vl_config(raw: dict[str, Any], where: str) -> QwenVLConfig:
    from transformers import Qwen3VLConfig

    try:
        hf = Qwen3VLConfig.from_dict(dict(raw))
    except Exception as exc:  # transformers' validation names the field
        raise CheckpointError(f"{where}: not a valid Qwen3-VL config: {exc}") from None
    t = hf.text_config
    rope = dict(t.rope_parameters or {})
    section = rope.get("mrope_section")
    if not section:
        raise CheckpointError(f"{where}: Qwen3-VL config has no mrope_section in text_config.rope_parameters")
    if rope.get("rope_type", "default") != "default":
        raise CheckpointError(f"{where}: rope type {rope} is not supported (Qwen3-VL uses default M-RoPE)")
    text = TextConfig(hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                      num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                      num_key_value_heads=t.num_key_value_heads or t.num_attention_heads,
                      head_dim=t.head_dim or t.hidden_size // t.num_attention_heads, vocab_size=t.vocab_size,
                      rms_norm_eps=t.rms_norm_eps, rope_theta=float(rope["rope_theta"]),
                      attention_bias=bool(t.attention_bias), mlp_bias=False, hidden_act=t.hidden_act,
                      tie_word_embeddings=bool(hf.tie_word_embeddings),
                      max_position_embeddings=t.max_position_embeddings, bos_token_id=getattr(t, "bos_token_id", None),
                      eos_token_id=getattr(t, "eos_token_id", None), pad_token_id=t.pad_token_id)
    if text.hidden_act != "silu":
        raise CheckpointError(f"{where}: hidden_act {text.hidden_act!r} is not supported (Qwen3-VL uses silu)")
    section = tuple(int(s) for s in section)
    try:
        section_axes(section, text.head_dim, interleaved=True)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    vision = hf.vision_config.to_dict()
    return QwenVLConfig(text=text, mrope_section=section, vision_config=vision, image_token_id=int(hf.image_token_id),
                        video_token_id=hf.video_token_id, vision_start_token_id=hf.vision_start_token_id,
                        vision_end_token_id=hf.vision_end_token_id, spatial_merge_size=int(vision["spatial_merge_size"]),
                        source_format="qwen3_vl", mrope_interleaved=True)


class Qwen3Attention(LlamaAttention):
    """LLaMA attention with per-head RMSNorm on q and k (before RoPE)."""

    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)

    def project(self, x, cos, sin):
        """x (B, L, D) -> q (B, H, L, d), k, v (B, Hkv, L, d): norm per head, then RoPE."""
        B, L, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, L, self.n_heads, self.head_dim)).transpose(1, 2)  # (B, H, L, d)
        k = self.k_norm(self.k_proj(x).view(B, L, self.n_kv, self.head_dim)).transpose(1, 2)  # (B, Hkv, L, d)
        v = self.v_proj(x).view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


class Qwen3DecoderLayer(LlamaDecoderLayer):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.self_attn = Qwen3Attention(cfg, layer_idx)


def _qwen3_rotary(q, k, cos, sin):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

    return apply_rotary_pos_emb_vision(q, k, cos, sin)


def _qwen3_order(visual, grid):
    """No windows: the tower runs in raster order."""
    return torch.arange(int((grid.prod(-1) // visual.spatial_merge_unit).sum()), device=grid.device)


def _qwen3_merger_in(visual, last):
    """The merger MLP's input: the pre-shuffle LayerNorm per patch, merge^2 patches concatenated."""
    return visual.merger.norm(last).view(-1, visual.merger.hidden_size)


def _qwen3_merger_mlp(merger):
    return lambda x: merger.linear_fc2(merger.act_fn(merger.linear_fc1(x)))


QWEN3_TOWER = TowerSpec(rotary=_qwen3_rotary, order=_qwen3_order, merger_in=_qwen3_merger_in,
                        deepstack=lambda out: out.deepstack_features)


class Qwen3VLForRestore(Qwen2_5_VLForRestore):
    tower = QWEN3_TOWER
    layer_cls = Qwen3DecoderLayer

    def projector(self):
        return _qwen3_merger_mlp(self.visual.merger)


def build_qwen3_model(cfg: QwenVLConfig, folder: str, sd: dict[str, torch.Tensor], dtype: torch.dtype):
    """Our decoder + transformers' Qwen3-VL vision tower, weights loaded strictly."""
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    vcfg = Qwen3VLVisionConfig.from_dict(dict(cfg.vision_config))
    return load_into(Qwen3VLForRestore, Qwen3VLVisionModel._from_config(vcfg), cfg, folder, hf_to_ours(sd), dtype)
