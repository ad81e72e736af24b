"""DivPrune (spec §1): greedy max-min diversity on the projected features.

M = 1 - cos(X_i, X_j).  First pick: argmax over tokens of the second-smallest entry of its
column of M (its distance to the nearest *other* token).  Next picks: argmax of the minimum
distance to the picked set.  Ties -> lowest index.  Already-picked tokens are excluded
explicitly (the reference relies on their zero self-distance, which only differs for exact
duplicates).  Output order: pick order, which is how RESTORE's reference hands the tokens to the
LLM without merging (``token_order: reference``; the original DivPrune code sorts them by patch
index: ``token_order: position``).
"""
from __future__ import annotations

import torch

from .base import Reducer, ReductionInputs, Selection
from .common import complement, cosine_matrix
from .registry import register_reducer


def divprune_select(x: torch.Tensor, k: int) -> torch.Tensor:
    """x (B, N, D) -> (B, k) long indices in pick order."""
    B, N, _ = x.shape
    if not 0 <= k <= N:
        raise ValueError(f"divprune: k={k} must be in 0..N={N}")
    picks = torch.empty(B, k, dtype=torch.long, device=x.device)
    if k == 0:
        return picks
    dist = 1.0 - cosine_matrix(x)  # (B, N, N), computed once
    rows = torch.arange(B, device=x.device)
    if N == 1:
        picks[:, 0] = 0
        return picks
    nearest_other = dist.topk(2, dim=1, largest=False).values[:, 1, :]  # (B, N) per column
    first = nearest_other.argmax(dim=1)  # (B,) first max -> lowest index
    picks[:, 0] = first
    min_dist = dist[rows, first].clone()  # (B, N) distance to the picked set
    min_dist[rows, first] = float("-inf")
    for i in range(1, k):
        p = min_dist.argmax(dim=1)  # (B,)
        picks[:, i] = p
        min_dist = torch.minimum(min_dist, dist[rows, p])
        min_dist[rows, p] = float("-inf")
    return picks


@register_reducer("divprune")
class DivPrune(Reducer):
    emits_order = True

    def select(self, inp: ReductionInputs, k: int) -> Selection:
        kept = divprune_select(inp.feats, k)
        return Selection(kept, complement(kept, inp.feats.shape[1]))
