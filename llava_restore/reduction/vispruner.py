"""VisPruner (spec §1): important tokens by CLS attention, then duplicate removal.

n_imp = floor(k * important_ratio) tokens with the highest CLS attention a are kept.  The
others, ordered by a descending, form the residual R.  While |R| > n_div = k - n_imp: split R
alternately (even positions = A, odd = B), score each A token by its max cosine similarity to B
(pre-projector features), drop the r = min(step, |R| - n_div) highest-scoring A tokens; the new
residual is the surviving A tokens in descending-score order (the reference's
``argsort(descending)[r:]``) followed by B.  Ties -> lowest index everywhere.
"""
from __future__ import annotations

import torch

from .base import Reducer, ReductionInputs, Selection
from .common import argsort_desc, complement, cosine_matrix, floor_fraction
from .registry import register_reducer

DROP_PER_STEP = 8  # the reference drops at most 8 A tokens per round
BLOCK_FRACTION = 4  # score by whole rows while |B| > N / BLOCK_FRACTION (see _BScorer)
OUTSIDE_B = -1e30  # added to the cosines of the tokens outside B: below every cosine


class _BScorer:
    """max_b cos(x_a, x_b) over b in B, for each a in A: the exact maximum of the same entries.

    Holds one forward's cosine matrix sim (B, N, N) and a reusable (B, 1, N) column mask.  Two exact
    ways, chosen by shape only:
    - |B| large: copy A's whole rows (contiguous) and add 0 on B's columns, OUTSIDE_B elsewhere
      (x + 0 = x exactly), then the row maximum: ~n_a * N cheap vectorised element operations;
    - |B| small: gather the n_a * n_b entries by flat index (costlier per element, fewer of them).
    """

    def __init__(self, sim: torch.Tensor):
        B, N, _ = sim.shape
        self.B, self.N = B, N
        self.flat, self.rows = sim.view(B, N * N), sim.view(B * N, N)  # flat[s, a * N + b]; rows[s * N + a]
        self.offset = None if B == 1 else torch.arange(B, device=sim.device).unsqueeze(1) * N  # (B, 1)
        self.on_b = torch.empty(B, 1, N, dtype=sim.dtype, device=sim.device)

    def __call__(self, a_idx: torch.Tensor, b_idx: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """a_idx (B, n_a), b_idx (B, n_b) token indices -> (B, n_a), written into ``out`` when given."""
        B, N = self.B, self.N
        n_a, n_b = a_idx.shape[1], b_idx.shape[1]
        if n_b * BLOCK_FRACTION > N:
            rows = a_idx.reshape(-1) if self.offset is None else (a_idx + self.offset).view(-1)
            block = self.rows.index_select(0, rows).view(B, n_a, N)  # (B, n_a, N)
            on_b = self.on_b.fill_(OUTSIDE_B).scatter_(2, b_idx.unsqueeze(1), 0.0)  # (B, 1, N): 0 on B's columns
            return torch.amax(block.add_(on_b), dim=-1, out=out)
        pair = torch.add(b_idx.unsqueeze(1), a_idx.unsqueeze(2), alpha=N).view(B, n_a * n_b)  # flat [a, b]
        return torch.amax(self.flat.gather(1, pair).view(B, n_a, n_b), dim=-1, out=out)


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
    max_to_b = _BScorer(cosine_matrix(x.detach()))  # the (B, N, N) cosines, once (indices only)
    # the loop's shapes depend on N, k and drop_per_step only: no host sync, no data-dependent size;
    # few tensor calls per round (on a CPU their dispatch cost is most of a late round's time)
    R = residual.shape[1]
    # sort keys over the residual's positions: A's scores at the even ones, -inf at the odd ones (B),
    # never overwritten; one stable descending sort then lists A by score (ties -> A's order) and
    # then B in its order, which is exactly [A by argsort_desc(scores), B]
    keys = torch.full((B, R), float("-inf"), dtype=torch.float32, device=x.device)
    while R > n_div:
        a_idx, b_idx = residual[:, 0::2], residual[:, 1::2]  # (B, ceil(R/2)), (B, floor(R/2))
        n_a, n_b = (R + 1) // 2, R // 2
        r = min(drop_per_step, R - n_div, n_a)
        if r == n_a:  # every A token goes; no need to score
            residual, R = b_idx, n_b
            continue
        max_to_b(a_idx, b_idx, out=keys[:, 0:R:2])  # (B, |A|): max cosine to B, exact
        order = torch.sort(keys[:, :R], dim=1, descending=True, stable=True).indices  # (B, R)
        residual, R = residual.gather(1, order[:, r:]), R - r  # the r best-scoring A tokens go
    return torch.cat([important, residual], dim=1)


@register_reducer("vispruner")
class VisPruner(Reducer):
    needs_cls_attn = True
    needs_vis_feats = True

    def select(self, inp: ReductionInputs, k: int) -> Selection:
        kept = vispruner_select(inp.vis_feats, inp.cls_attn, k, inp.cfg.vispruner_important_ratio)
        return Selection(kept, complement(kept, inp.feats.shape[1]))
