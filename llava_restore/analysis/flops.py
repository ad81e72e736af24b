"""Analytic prefill costs (docs/ablations.md, "The FLOP formula").  One FLOP = one multiply or one
add, so a (m x k) @ (k x n) product costs 2·m·k·n.  Element-wise work (norms, RoPE, softmax,
activations, residual adds) is not counted; attention counts the full L x L square (what a dense
kernel computes), not only the causal half.

LLaMA decoder, L tokens, hidden D, H query heads and Hkv key/value heads of size d, MLP width F:

    per layer = 2·L·D·(H·d)        q_proj
              + 2·L·D·(2·Hkv·d)    k_proj, v_proj
              + 2·L·(H·d)·D        o_proj
              + 2·H·L²·d           scores  Q Kᵀ
              + 2·H·L²·d           weighted values  P V
              + 3·2·L·D·F          gate_proj, up_proj, down_proj
    prefill   = layers · per layer   (lm_head excluded: one row is needed for the next token)

CLIP vision tower (run up to its selected layer), N patches + CLS = Lv tokens, width Dv, MLP Fv:

    per layer = 4·2·Lv·Dv²  +  2·2·Lv²·Dv  +  2·2·Lv·Dv·Fv
    patch embedding 2·N·(3·p²)·Dv;  mlp2x_gelu projector 2·N·(Dv·D + D·D)

Stage-B anchor selection over M pruned tokens of width D: the cosine-similarity matrix 2·M²·D
(densities, distinctiveness, top-k and the assignment argmax are O(M²) comparisons, not counted).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaDims:
    hidden: int  # D
    intermediate: int  # F
    layers: int
    heads: int  # H
    kv_heads: int  # Hkv
    head_dim: int  # d

    @classmethod
    def of(cls, text_cfg) -> "LlamaDims":
        return cls(text_cfg.hidden_size, text_cfg.intermediate_size, text_cfg.num_hidden_layers,
                   text_cfg.num_attention_heads, text_cfg.num_key_value_heads, text_cfg.head_dim)


def llm_layer_flops(m: LlamaDims, L: int) -> dict[str, int]:
    D, F, H, Hkv, d = m.hidden, m.intermediate, m.heads, m.kv_heads, m.head_dim
    return {
        "q_proj": 2 * L * D * H * d,
        "kv_proj": 2 * L * D * 2 * Hkv * d,
        "o_proj": 2 * L * H * d * D,
        "scores": 2 * H * L * L * d,
        "attn_values": 2 * H * L * L * d,
        "mlp": 3 * 2 * L * D * F,
    }


def llm_prefill_flops(m: LlamaDims, L: int) -> int:
    """FLOPs of one sample's prefill of L tokens through every decoder layer."""
    return m.layers * sum(llm_layer_flops(m, L).values())


def vision_flops(hidden: int, intermediate: int, layers_run: int, n_patches: int, patch_size: int,
                 llm_hidden: int) -> int:
    """CLIP tower (patch embedding + ``layers_run`` encoder layers) + mlp2x_gelu projector, one image."""
    Lv, Dv = n_patches + 1, hidden
    layer = 4 * 2 * Lv * Dv * Dv + 2 * 2 * Lv * Lv * Dv + 2 * 2 * Lv * Dv * intermediate
    embed = 2 * n_patches * 3 * patch_size * patch_size * Dv
    projector = 2 * n_patches * (Dv * llm_hidden + llm_hidden * llm_hidden)
    return embed + layers_run * layer + projector


def anchor_flops(M: int, D: int) -> int:
    """Stage B's similarity matrix over the M pruned tokens."""
    return 2 * M * M * D


def kv_cache_bytes(m: LlamaDims, L: int, bytes_per_elem: int) -> int:
    """Keys and values of every layer for L tokens of one sample."""
    return 2 * m.layers * m.kv_heads * m.head_dim * L * bytes_per_elem


# ----------------------------------------------------------------------------- in-LLM reduction
# FastV / PDrop change the sequence length between layers: layer i runs on its own L_i (the first
# K layers at full length), so the decoder cost is the sum of the per-layer costs above.  Their
# ranking adds, per drop, the explicit attention rows of n_q queries over L keys (2·H·n_q·L·d) and,
# when the ranking layer's q/k are computed on the sequence entering it (PDrop), one extra q/k/v
# projection of those L tokens.

def llm_prefill_flops_layers(m: LlamaDims, lengths) -> int:
    """One sample's prefill when layer i runs on lengths[i] tokens (len(lengths) == layers)."""
    if len(lengths) != m.layers:
        raise ValueError(f"need one length per layer ({m.layers}), got {len(lengths)}")
    return sum(sum(llm_layer_flops(m, int(L)).values()) for L in lengths)


def inllm_score_flops(m: LlamaDims, L: int, n_q: int, own_layer: bool) -> int:
    """One drop's ranking: n_q attention rows over L keys; + the q/k/v projection of L tokens
    unless the scores come from the layer's own forward (``own_layer``)."""
    rows = 2 * m.heads * n_q * L * m.head_dim
    proj = 0 if own_layer else 2 * L * m.hidden * (m.heads + 2 * m.kv_heads) * m.head_dim
    return rows + proj


def kv_cache_bytes_layers(m: LlamaDims, lengths, bytes_per_elem: int) -> int:
    """Keys and values when layer i caches lengths[i] tokens."""
    return sum(2 * m.kv_heads * m.head_dim * int(L) * bytes_per_elem for L in lengths)
