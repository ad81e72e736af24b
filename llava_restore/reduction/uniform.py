"""Uniform pruning: a regular stride over the 2-D patch grid.

For k of an H x W grid: gh = clamp(round(sqrt(k H / W)), 1, H) lattice rows and
gw = ceil(k / gh) columns (if gw > W: gw = W, gh = ceil(k / W)); lattice points at rows
floor((i + 1/2) H / gh) and columns floor((j + 1/2) W / gw); when the lattice has more than k
points, k of them are taken evenly in raster order (point floor((i + 1/2) gh gw / k)).
At k = 64 on 24 x 24 this is the 8 x 8 lattice of rows/columns 1, 4, 7, ..., 22.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .base import Reducer, ReductionInputs, Selection
from .common import complement, square_grid
from .registry import register_reducer


def _even(count: int, total: int, device) -> torch.Tensor:
    """count evenly spaced integers in [0, total): floor((i + 1/2) * total / count)."""
    return ((torch.arange(count, device=device, dtype=torch.float64) + 0.5) * total / count).floor().long()


def uniform_select(n_tokens: int, k: int, grid_hw: Optional[tuple[int, int]] = None, device=None) -> torch.Tensor:
    """-> (k,) long ascending patch indices (the same for every sample)."""
    if not 0 <= k <= n_tokens:
        raise ValueError(f"uniform: k={k} must be in 0..N={n_tokens}")
    H, W = square_grid(n_tokens, grid_hw, "uniform")
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    gh = min(max(round(math.sqrt(k * H / W)), 1), H)
    gw = math.ceil(k / gh)
    if gw > W:
        gw, gh = W, math.ceil(k / W)
    rows, cols = _even(gh, H, device), _even(gw, W, device)
    lattice = (rows.unsqueeze(1) * W + cols.unsqueeze(0)).flatten()  # (gh*gw,) ascending
    return lattice[_even(k, lattice.numel(), device)]


@register_reducer("uniform")
class UniformPrune(Reducer):
    def select(self, inp: ReductionInputs, k: int) -> Selection:
        B, N, _ = inp.feats.shape
        kept = uniform_select(N, k, inp.grid_hw, inp.feats.device).expand(B, k).clone()
        return Selection(kept, complement(kept, N))
