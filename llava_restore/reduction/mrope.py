"""RESTORE's positions and distance term under M-RoPE (Qwen2.5-VL), a named extension.

M-RoPE splits the head_dim/2 rotary frequencies into sections (``mrope_section`` = (s_t, s_h, s_w),
summing to head_dim/2); frequency k rotates by the position on axis(k) in {t, h, w}.  A token's
position is a 3-vector p = (p_t, p_h, p_w); text tokens have p_t = p_h = p_w.

Distance term (docs/restore.md, "M-RoPE"):  D(Δ) = mean_k cos(Δ_axis(k) · θ_k),  Δ = p_i - p_j,
θ_k = rope_theta^(-2k / head_dim), and the logit term log(c - D(Δ)).  D(0) = 1 (the term is 0 for c = 2),
and when Δ_t = Δ_h = Δ_w = δ it is exactly the 1-D D(δ) of ``distance.py``.

Because D is a sum over the three sections, D(Δ) = Σ_a T_a[Δ_a] with per-axis tables
T_a[δ] = (1/K) Σ_{k in section a} cos(δ θ_k); integer positions use those tables.
"""
from __future__ import annotations

import torch

from .distance import CHUNK
from .positions import representative_positions
from .types import ReductionResult


def section_axes(section, head_dim: int, device=None, interleaved: bool = False) -> torch.Tensor:
    """(head_dim/2,) long: the axis (0 t, 1 h, 2 w) of every rotary frequency.

    Contiguous (Qwen2-VL, Qwen2.5-VL): the first s_t frequencies are t, the next s_h h, the last s_w w.
    Interleaved (Qwen3-VL): frequency k is h for k = 1, 4, ... < 3 s_h, w for k = 2, 5, ... < 3 s_w,
    t otherwise."""
    section = [int(s) for s in section]
    K = head_dim // 2
    if len(section) != 3 or sum(section) != K or head_dim % 2 or min(section) < 0:
        raise ValueError(f"mrope_section={section} must be 3 non-negative sizes summing to head_dim/2={K}")
    if not interleaved:
        return torch.repeat_interleave(torch.arange(3, device=device), torch.tensor(section, device=device))
    axes = torch.zeros(K, dtype=torch.long, device=device)
    axes[1:3 * section[1]:3] = 1
    axes[2:3 * section[2]:3] = 2
    return axes


def _theta(rope_theta: float, head_dim: int, device) -> torch.Tensor:
    if head_dim < 2 or head_dim % 2:
        raise ValueError(f"M-RoPE distance: head_dim={head_dim} must be an even number >= 2")
    if rope_theta <= 0:
        raise ValueError(f"M-RoPE distance: rope_theta={rope_theta} must be > 0")
    k = torch.arange(head_dim // 2, dtype=torch.float64, device=device)
    return torch.tensor(float(rope_theta), dtype=torch.float64, device=device) ** (-2.0 * k / head_dim)


def mrope_decay(d3: torch.Tensor, rope_theta: float, head_dim: int, section, interleaved: bool = False) -> torch.Tensor:
    """D(Δ) elementwise in float64: d3 (..., 3) -> (...)."""
    if d3.shape[-1] != 3:
        raise ValueError(f"M-RoPE distances must end in 3 axes (t, h, w), got shape {tuple(d3.shape)}")
    theta = _theta(rope_theta, head_dim, d3.device)  # (K,)
    axes = section_axes(section, head_dim, d3.device, interleaved)  # (K,)
    flat = d3.reshape(-1, 3).to(torch.float64)  # (M, 3)
    out = torch.empty(flat.shape[0], dtype=torch.float64, device=d3.device)
    for start in range(0, flat.shape[0], CHUNK):
        block = flat[start:start + CHUNK][:, axes]  # (m, K): Δ on each frequency's axis
        out[start:start + CHUNK] = torch.cos(block * theta).mean(dim=-1)
    return out.view(d3.shape[:-1])


def mrope_distance_bias(d3, rope_theta: float, head_dim: int, section, c: float = 2.0,
                        interleaved: bool = False) -> torch.Tensor:
    """log(c - D(Δ)): d3 (..., 3) -> (...), in d3's float dtype (float32 for integers), as distance_bias."""
    if c <= 1.0:
        raise ValueError(f"M-RoPE distance: c={c} must be > 1")
    d3 = torch.as_tensor(d3)
    out_dtype = d3.dtype if d3.is_floating_point() else torch.get_default_dtype()
    return torch.log(c - mrope_decay(d3, rope_theta, head_dim, section, interleaved)).to(out_dtype)


def mrope_axis_tables(lo: int, hi: int, rope_theta: float, head_dim: int, section, device=None,
                      interleaved: bool = False) -> torch.Tensor:
    """(3, hi - lo + 1) float64: T_a[δ - lo] = (1/K) Σ_{k in section a} cos(δ θ_k), δ in [lo, hi]."""
    theta = _theta(rope_theta, head_dim, device)
    axes = section_axes(section, head_dim, device, interleaved)
    d = torch.arange(lo, hi + 1, dtype=torch.float64, device=device)
    cos = torch.cos(d[:, None] * theta[None]) / theta.numel()  # (R, K)
    return torch.stack([cos[:, axes == a].sum(-1) for a in range(3)])  # (3, R)


def mrope_dense_bias(qpos: torch.Tensor, kpos: torch.Tensor, rope_theta: float, head_dim: int, section,
                     c: float = 2.0, interleaved: bool = False) -> torch.Tensor:
    """qpos (B, Lq, 3), kpos (B, Lk, 3) -> (B, Lq, Lk) float32 log(c - D(q - k)); per-axis tables for
    integer positions, the direct formula otherwise (position_rep=mean)."""
    d = qpos[:, :, None, :].double() - kpos[:, None, :, :].double()  # (B, Lq, Lk, 3)
    if not bool(torch.all(d == d.round())):
        return mrope_distance_bias(d, rope_theta, head_dim, section, c, interleaved).float()
    lo, hi = int(d.min()), int(d.max())
    tables = mrope_axis_tables(lo, hi, rope_theta, head_dim, section, d.device, interleaved)  # (3, R)
    idx = (d - lo).long()
    decay = tables[0][idx[..., 0]] + tables[1][idx[..., 1]] + tables[2][idx[..., 2]]
    return torch.log(c - decay).float()


# ------------------------------------------------------------------ positions of visual tokens
def grid_ids(grid_hw: tuple[int, int], device=None) -> torch.Tensor:
    """(N, 2) long (row, col) of the N = H*W merged tokens in raster order."""
    h, w = int(grid_hw[0]), int(grid_hw[1])
    t = torch.arange(h * w, device=device)
    return torch.stack([t // w, t % w], dim=-1)


def visual_mrope_ids(result: ReductionResult, grid_hw: tuple[int, int], start: float,
                     rep: str = "median") -> tuple[torch.Tensor, float]:
    """3-D rotary ids of one image's n output tokens and the position where the text after it starts.

    A kept token keeps (start, start + row, start + col) (an image's t index is 0); a merged token
    takes its representative member's ids: ``rep`` first/median/last is one member in raster order
    (median: the lower median), mean averages the members' rows and columns.  The text after
    continues at start + max(H, W), exactly where the unreduced sequence would.
    result: a single-sample ReductionResult with N = H*W patches -> ((n, 3) float32, next start).
    """
    if result.features.shape[0] != 1:
        raise ValueError(f"visual_mrope_ids takes one image's result, got a batch of {result.features.shape[0]}")
    h, w = int(grid_hw[0]), int(grid_hw[1])
    N, n = result.source.shape[1], result.n
    dev = result.features.device
    if N != h * w:
        raise ValueError(f"image grid {h}x{w} has {h * w} merged tokens but the reduction saw N={N}")
    if bool(result.is_extra.any()):
        raise ValueError("M-RoPE positions cannot place a non-patch token (VisionZip's CLS token) on the "
                         "M-RoPE grid; Qwen2.5-VL has none: set visionzip_cls=false")
    if rep == "mean":
        rc = grid_ids((h, w), dev).double()  # (N, 2)
        src = result.source[0]
        kept = src >= 0
        sums = torch.zeros(n, 2, dtype=torch.float64, device=dev).index_add_(0, src[kept], rc[kept])
        counts = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, src[kept], torch.ones_like(rc[kept, 0]))
        rows, cols = (sums / counts[:, None]).float().unbind(-1)  # source indexes output slots
    else:
        t = result.positions[0].long()  # (n,) representative raster index
        rows, cols = (t // w).float(), (t % w).float()
    tpos = torch.full((n,), float(start), device=dev)
    ids = torch.stack([tpos, rows + start, cols + start], dim=-1)
    return ids, start + max(h, w)
