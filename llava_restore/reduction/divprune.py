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
    """x (B, N, D) -> (B, k) long indices in pick order.

    One tensor op chain per pick, batched over B, no host syncs: the distance matrix gets -inf on
    its diagonal once, so taking the running minimum with a picked token's row also marks that
    token as picked (min(., -inf) = -inf), exactly as setting it to -inf after the minimum would.
    """
    B, N, _ = x.shape
    if not 0 <= k <= N:
        raise ValueError(f"divprune: k={k} must be in 0..N={N}")
    if k == 0:
        return torch.empty(B, 0, dtype=torch.long, device=x.device)
    if N == 1:
        return torch.zeros(B, 1, dtype=torch.long, device=x.device)
    dist = cosine_matrix(x.detach()).neg_().add_(1.0)  # (B, N, N) = 1 - cos, once, in place (no graph)
    # first pick: argmax over columns of the second-smallest entry (an exact order statistic:
    # hide one minimum of each column, take the minimum of the rest, put it back)
    low, at = dist.min(dim=1, keepdim=True)  # (B, 1, N)
    dist.scatter_(1, at, float("inf"))
    nearest_other = dist.amin(dim=1)  # (B, N)
    dist.scatter_(1, at, low)
    first = nearest_other.argmax(dim=1)  # (B,) first max -> lowest index
    dist.diagonal(dim1=1, dim2=2).fill_(float("-inf"))  # a picked token's own entry excludes it
    rows = dist.view(B * N, N)  # row b * N + t = distances of token t of sample b
    offset = torch.arange(B, device=x.device) * N  # (B,)
    min_dist = rows.index_select(0, first + offset)  # (B, N) distance to the picked set
    picks = [first]
    for _ in range(1, k):
        p = min_dist.argmax(dim=1)  # (B,) first max -> lowest index
        picks.append(p)
        torch.minimum(min_dist, rows.index_select(0, p + offset), out=min_dist)
    return torch.stack(picks, dim=1)


@register_reducer("divprune")
class DivPrune(Reducer):
    emits_order = True

    def select(self, inp: ReductionInputs, k: int) -> Selection:
        kept = divprune_select(inp.feats, k)
        return Selection(kept, complement(kept, inp.feats.shape[1]))
