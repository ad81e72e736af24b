"""The one result type every reduction returns (spec §3)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import torch

PATCH = -1  # ``extra`` value of an output token made of patches
CLS_INDEX = 0  # the CLS token's index in the vision tower's sequence [CLS, patch_0, ..., patch_{N-1}]
EXTRA_POSITION = -1.0  # ``positions`` value of a non-patch token: before every patch, as in the ViT sequence


class BudgetError(ValueError):
    """A token budget the input cannot meet (n_vis outside 1..N): a user error, reported in one line."""


@dataclass
class ReductionResult:
    """Per-sample bookkeeping for the n output visual tokens (batch-first, no B=1 assumption).

    features:  (B, n, D) output token features (projected space), in the order the LLM receives
               them: by ``positions``, or the base method's own output order (``token_order``).
    source:    (B, N) long; for each original patch, the index in [0, n) of the output token it
               belongs to, or -1 if it was dropped (pure pruning).  This is the member-set map.
    sizes:     (B, n) float; number of originals each output token stands for (kept = 1; a
               non-patch token such as the CLS token stands for itself: 1).
    positions: (B, n) float; representative *patch index* t in [0, N) of each output token
               (kept: its own t; merged: first/median/last/mean of its members; a non-patch
               token: EXTRA_POSITION).  The model adds the prefix length P to get the retained
               RoPE position.  Non-decreasing along n when the tokens are ordered by position.
    extra:     (B, n) long or None; for a non-patch output token (no member in ``source``), its
               index in the vision tower's sequence (CLS_INDEX for the CLS token); PATCH (-1)
               for tokens made of patches.  None: every output token is made of patches.
    """

    features: torch.Tensor
    source: torch.Tensor
    sizes: torch.Tensor
    positions: torch.Tensor
    extra: Optional[torch.Tensor] = None

    @property
    def n(self) -> int:
        return self.features.shape[1]

    @property
    def is_extra(self) -> torch.Tensor:
        """(B, n) bool: True on non-patch output tokens."""
        if self.extra is None:
            return torch.zeros(self.sizes.shape, dtype=torch.bool, device=self.sizes.device)
        return self.extra != PATCH

    def members(self, b: int, j: int) -> torch.Tensor:
        """Indices of the original patches that output token j of sample b stands for."""
        return (self.source[b] == j).nonzero(as_tuple=True)[0]

    def split(self) -> list["ReductionResult"]:
        """One single-sample result per sample, in batch order."""
        B = self.features.shape[0]
        out = []
        for i in range(B):
            parts = {f.name: getattr(self, f.name) for f in fields(self)}
            out.append(ReductionResult(**{k: None if v is None else v[i:i + 1] for k, v in parts.items()}))
        return out
