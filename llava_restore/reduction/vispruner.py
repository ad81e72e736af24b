"""VisPruner (spec §1): important tokens by CLS attention, then duplicate removal.

n_imp = floor(k * important_ratio) tokens with the highest CLS attention a are kept.  The
others, ordered by a descending, form the residual R.  While |R| > n_div = k - n_imp: split R
alternately (even positions = A, odd = B), score each A token by its max cosine similarity to B
(pre-projector features), drop the r = min(step, |R| - n_div) highest-scoring A tokens; the new
residual is the surviving A tokens in ascending-score order of that sort (i.e. the reference's
``argsort(descending)[r:]``) followed by B.  Ties -> lowest index everywhere.
"""
from __future__ import annotations

import torch

from .base import Reducer, ReductionInputs, Selection
from .common import argsort_desc, complement, cosine_matrix, floor_fraction
from .registry import register_reducer

DROP_PER_STEP = 8  # the reference drops at most 8 A tokens per round


def vispruner_select(
    x: torch.Tensor,
    cls_attn: torch.Tensor,
    k: int,
    important_ratio: float = 0.5,
    drop_per_step: int = DROP_PER_STEP,
) -> torch.Tensor:
    """x (B, N, Dv) pre-projector features, cls_attn (B, N) -> (B, k) long (important first)."""
    B, N, _ = x.shape
    if not 0 <= k <= N:
        raise ValueError(f"vispruner: k={k} must be in 0..N={N}")
    if not 0.0 <= important_ratio <= 1.0:
        raise ValueError(f"vispruner: important_ratio={important_ratio} must be in [0, 1]")
    if drop_per_step < 1:
        raise ValueError(f"vispruner: drop_per_step={drop_per_step} must be >= 1")
    n_imp = floor_fraction(k, important_ratio)
    n_div = k - n_imp
    order = argsort_desc(cls_attn.float())  # (B, N)
    important, residual = order[:, :n_imp], order[:, n_imp:]  # (B, n_imp), (B, R)
    sim = cosine_matrix(x.detach())  # (B, N, N), once (indices only: no graph)
    rows_of = sim.view(B * N, N)  # row b * N + t = similarities of token t of sample b
    offset = (torch.arange(B, device=x.device) * N).unsqueeze(1)  # (B, 1)
    # the loop's shapes depend on N, k and drop_per_step only: no host sync, no data-dependent size
    n_a0, n_b0 = (residual.shape[1] + 1) // 2, residual.shape[1] // 2
    row_buf = sim.new_empty(B * n_a0 * N)  # reused by every round (no per-round allocation)
    pair_buf = sim.new_empty(B * n_a0 * n_b0)
    while residual.shape[1] > n_div:
        R = residual.shape[1]
        a_idx, b_idx = residual[:, 0::2], residual[:, 1::2]  # (B, ceil(R/2)), (B, floor(R/2))
        n_a, n_b = a_idx.shape[1], b_idx.shape[1]
        r = min(drop_per_step, R - n_div, n_a)
        if r == n_a:  # every A token goes; no need to score
            residual = b_idx
            continue
        rows = torch.index_select(rows_of, 0, (a_idx + offset).view(-1),
                                  out=row_buf[: B * n_a * N].view(B * n_a, N)).view(B, n_a, N)
        pairs = torch.gather(rows, 2, b_idx.unsqueeze(1).expand(B, n_a, n_b),
                             out=pair_buf[: B * n_a * n_b].view(B, n_a, n_b))  # (B, |A|, |B|)
        scores = pairs.amax(dim=-1)  # (B, |A|) exact: a max of the same similarities
        survivors = argsort_desc(scores)[:, r:]  # (B, |A| - r)
        residual = torch.cat([a_idx.gather(1, survivors), b_idx], dim=1)
    return torch.cat([important, residual], dim=1)


@register_reducer("vispruner")
class VisPruner(Reducer):
    needs_cls_attn = True
    needs_vis_feats = True

    def select(self, inp: ReductionInputs, k: int) -> Selection:
        kept = vispruner_select(inp.vis_feats, inp.cls_attn, k, inp.cfg.vispruner_important_ratio)
        return Selection(kept, complement(kept, inp.feats.shape[1]))
