"""Spec §5 distance term: log(c - D(d)), D(d) = mean_k cos(d * theta_k),
theta_k = rope_theta^(-2k / head_dim), k = 0 .. head_dim/2 - 1.

D(0) = 1, so with c = 2 the term is exactly 0 on the diagonal.  Computed in float64 and cast
back to the input's float dtype (float32 for integer tensors and Python numbers).
"""
from __future__ import annotations

import torch

CHUNK = 1 << 16  # distances per float64 block (limits the (chunk, head_dim/2) temporary)


def rope_decay(d: torch.Tensor, rope_theta: float, head_dim: int) -> torch.Tensor:
    """D(d) elementwise, float64.  d any shape -> same shape."""
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"distance_bias: head_dim={head_dim} must be an even number >= 2")
    if rope_theta <= 0:
        raise ValueError(f"distance_bias: rope_theta={rope_theta} must be > 0")
    k = torch.arange(head_dim // 2, dtype=torch.float64, device=d.device)
    theta = torch.tensor(float(rope_theta), dtype=torch.float64, device=d.device) ** (-2.0 * k / head_dim)
    flat = d.reshape(-1).to(torch.float64)
    out = torch.empty_like(flat)
    for start in range(0, flat.numel(), CHUNK):
        block = flat[start : start + CHUNK]
        out[start : start + CHUNK] = torch.cos(block.unsqueeze(-1) * theta).mean(dim=-1)
    return out.view(d.shape)


def distance_bias(d, rope_theta: float, head_dim: int, c: float = 2.0) -> torch.Tensor:
    """log(c - D(d)) elementwise.  d: tensor (any shape, int or float) or a Python number."""
    if c <= 1.0:
        raise ValueError(f"distance_bias: c={c} must be > 1 (D(d) reaches 1, so log(c - D) needs c > 1)")
    if not isinstance(d, torch.Tensor):
        d = torch.tensor(d)
    out_dtype = d.dtype if d.is_floating_point() else torch.get_default_dtype()
    return torch.log(c - rope_decay(d, rope_theta, head_dim)).to(out_dtype)
