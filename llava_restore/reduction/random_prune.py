"""Random pruning (seeded): keep the first k of a seeded permutation of the N patches.

The permutation comes from a fresh generator seeded with the config seed (or one draw from the
caller's generator), identical for every sample, so a sample's picks never depend on its batch.
"""
from __future__ import annotations

import torch

from .base import Reducer, ReductionInputs, Selection
from .common import complement, random_ranks
from .registry import register_reducer


def random_select(batch: int, n_tokens: int, k: int, seed: int, device=None) -> torch.Tensor:
    """-> (batch, k) long, the same seeded picks for every sample."""
    if not 0 <= k <= n_tokens:
        raise ValueError(f"random: k={k} must be in 0..N={n_tokens}")
    return random_ranks(n_tokens, seed, device)[:k].expand(batch, k).clone()


@register_reducer("random")
class RandomPrune(Reducer):
    def select(self, inp: ReductionInputs, k: int) -> Selection:
        B, N, _ = inp.feats.shape
        kept = random_select(B, N, k, inp.seed, inp.feats.device)
        return Selection(kept, complement(kept, N))
