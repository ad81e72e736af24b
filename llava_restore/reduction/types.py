"""The one result type every reduction returns (spec §3)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReductionResult:
    """Per-sample bookkeeping for the n output visual tokens (batch-first, no B=1 assumption).

    features:  (B, n, D) output token features (projected space), ordered by ``positions``.
    source:    (B, N) long; for each original token, the index in [0, n) of the output token it
               belongs to, or -1 if it was dropped (pure pruning).  This is the member-set map.
    sizes:     (B, n) float; number of originals each output token stands for (kept = 1).
    positions: (B, n) float; representative *patch index* t in [0, N) of each output token
               (kept: its own t; merged: first/median/last/mean of its members).  The model adds
               the prefix length P to get the retained RoPE position.  Non-decreasing along n.
    """

    features: torch.Tensor
    source: torch.Tensor
    sizes: torch.Tensor
    positions: torch.Tensor

    @property
    def n(self) -> int:
        return self.features.shape[1]

    def members(self, b: int, j: int) -> torch.Tensor:
        """Indices of the originals that output token j of sample b stands for."""
        return (self.source[b] == j).nonzero(as_tuple=True)[0]
