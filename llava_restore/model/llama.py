"""A compact LLaMA decoder whose attention takes RESTORE's terms and explicit (float) positions.

Parameter names match transformers' ``LlamaModel`` (``embed_tokens``, ``layers.{i}.self_attn.q_proj``,
...), so LLaMA/Vicuna weights load unchanged.  With no calibration terms it computes exactly LLaMA.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import AttnContext, attention
from .config import TextConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions (B, L) float -> cos, sin (B, 1, L, head_dim); fractional positions allowed."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[:, :, None] * inv_freq[None, None, :]  # (B, L, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, L, d)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):  # x (B, H, L, d)
    return x * cos + _rotate_half(x) * sin


@dataclass
class KVCache:
    """Keys/values per layer plus the per-key metadata the calibration terms need."""

    keys: list = field(default_factory=list)  # per layer (B, Hkv, Lk, d)
    values: list = field(default_factory=list)
    key_valid: torch.Tensor | None = None  # (B, Lk) bool
    key_pos: torch.Tensor | None = None  # (B, Lk) float
    key_log_size: torch.Tensor | None = None  # (B, Lk) or None
    key_log_size_l0: torch.Tensor | None = None
    key_visual: torch.Tensor | None = None  # (B, Lk) bool
    next_pos: torch.Tensor | None = None  # (B,) float: position of the next token
    # in-LLM reduction (llava_restore/reduction/inllm.py): from layer ``start`` on, the layers hold
    # fewer keys; each stage carries their metadata (the fields above describe layer 0's keys)
    stages: list = field(default_factory=list)  # of inllm.KVStage, by increasing start layer

    @property
    def length(self) -> int:
        return 0 if self.key_valid is None else self.key_valid.shape[1]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (1-D long), in that order (drops finished sequences)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        for name in ("key_valid", "key_pos", "key_log_size", "key_log_size_l0", "key_visual", "next_pos"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, rows))
        for stage in self.stages:
            stage.select_rows(rows)

    def set_key_meta(self, prep) -> None:
        """Layer 0's per-key metadata from a prefill's prepared inputs (``valid``, ``positions``, ...)."""
        self.key_valid, self.key_pos, self.key_visual = prep.valid, prep.positions, prep.visual
        self.key_log_size, self.key_log_size_l0, self.next_pos = prep.log_size, prep.log_size_l0, prep.next_pos

    def append_text(self, q_pos: torch.Tensor) -> None:
        """Metadata of T new text keys at positions ``q_pos`` (B, T) or (B, T, axes): valid, not visual,
        size 1 (log 0); ``next_pos`` moves on by T."""
        B, T = q_pos.shape[:2]
        dev = q_pos.device
        zeros = torch.zeros(B, T, device=dev)
        self.key_valid = torch.cat([self.key_valid, torch.ones(B, T, dtype=torch.bool, device=dev)], 1)
        self.key_pos = torch.cat([self.key_pos, q_pos], 1)
        self.key_visual = torch.cat([self.key_visual, torch.zeros(B, T, dtype=torch.bool, device=dev)], 1)
        self.key_log_size = torch.cat([self.key_log_size, zeros], 1)
        self.key_log_size_l0 = torch.cat([self.key_log_size_l0, zeros], 1)
        self.next_pos = self.next_pos + T


class LlamaAttention(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=cfg.attention_bias)

    def project(self, x, cos, sin):
        """x (B, L, D) -> q (B, H, L, d), k, v (B, Hkv, L, d), RoPE applied to q and k."""
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, d)
        k = self.k_proj(x).view(B, L, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, L, d)
        v = self.v_proj(x).view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, ctx: AttnContext, cache: KVCache | None, probe=None):
        """``probe(q, k)``, when given, sees this layer's queries and keys (after RoPE, cache included)."""
        B, L, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            if len(cache.keys) > self.layer_idx:
                k = torch.cat([cache.keys[self.layer_idx], k], dim=2)
                v = torch.cat([cache.values[self.layer_idx], v], dim=2)
                cache.keys[self.layer_idx], cache.values[self.layer_idx] = k, v
            else:
                cache.keys.append(k)
                cache.values.append(v)
        if probe is not None:
            probe(q, k)
        out = attention(q, k, v, ctx, self.layer_idx)  # (B, H, L, d)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_idx)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, ctx, cache, probe=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx, cache, probe)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaDecoder(nn.Module):
    """embed_tokens + layers + norm (the ``model.`` part of LlamaForCausalLM)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, h: torch.Tensor, positions: torch.Tensor, ctx: AttnContext, cache: KVCache | None = None,
                hooks=None):
        """h (B, L, D) input embeddings, positions (B, L) float -> (B, L, D) final hidden states.

        ``hooks`` (per-forward state of an in-LLM reduction, ``llava_restore.reduction.inllm``):
        ``hooks.before_layer(i, decoder, h, positions, cos, sin, ctx)`` returns None or a new
        (h, positions, ctx) (fewer tokens from layer i on), ``hooks.probe(i)`` a ``probe(q, k)`` for
        layer i's attention or None, and ``hooks.finish(h)`` maps the final states back to the
        input layout."""
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, h.dtype)
        for i, layer in enumerate(self.layers):
            probe = None
            if hooks is not None:
                changed = hooks.before_layer(i, self, h, positions, cos, sin, ctx)
                if changed is not None:
                    h, new_positions, ctx = changed
                    if new_positions is not positions:
                        positions = new_positions
                        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, h.dtype)
                probe = hooks.probe(i)
            if self.gradient_checkpointing and self.training and cache is None:
                h = checkpoint(layer, h, cos, sin, ctx, None, probe, use_reentrant=False)
            else:
                h = layer(h, cos, sin, ctx, cache, probe)
        h = self.norm(h)
        return h if hooks is None else hooks.finish(h)
