"""HoloV (spec §1): budget allocated across contiguous chunks by a holistic chunk score.

Chunks: the flattened sequence cut into ``num_chunks`` contiguous pieces, the first N % C one
token longer (36 each for N = 576, C = 16).  Inside a chunk of s tokens:
  S = cosine similarity with the diagonal zeroed;
  mean_i = sum_{j != i} S_ij / (s - 1);  var_i = sum_{j != i} (S_ij - mean_i)^2 / (s - 1)
  (spec: "over the other tokens"; the reference code also counts the zeroed diagonal,
  i.e. adds mean_i^2 / (s - 1): ``var_includes_self=True``);  a chunk of 1 token has var 0;
  score_i = 1000 a_i + 0.09 var_i * mean_c|1000 a| / (mean_c|var| + 1e-6);
  chunk score = mean_c score_i.
Allocation of k: w_c = score_c / (sum score + 1e-6); floor(w_c k); the remainder +1 each to the
highest weights; clamp to chunk sizes and give any shortfall to the chunks with room, highest
weight first.  Each chunk keeps its top tokens by a.  Dropped tokens are ranked by a descending.
"""
from __future__ import annotations

import torch

from .base import Reducer, ReductionInputs, Selection
from .common import argsort_desc, complement, mask_to_indices, normalize
from .registry import register_reducer

ATTN_SCALE = 1000.0
VAR_WEIGHT = 0.09
EPS = 1e-6


def chunk_sizes(n_tokens: int, num_chunks: int) -> list[int]:
    """Sizes of the contiguous chunks (empty chunks, when N < C, are left out)."""
    if num_chunks < 1:
        raise ValueError(f"holov: num_chunks={num_chunks} must be >= 1")
    base, extra = divmod(n_tokens, num_chunks)
    sizes = [base + (1 if c < extra else 0) for c in range(num_chunks)]
    return [s for s in sizes if s > 0]


def _padded_chunks(n_tokens: int, sizes: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx (C, smax) token index per slot, clamped; valid (C, smax) bool)."""
    smax = max(sizes)
    starts = torch.tensor([0] + sizes[:-1], device=device).cumsum(0)  # (C,)
    slot = torch.arange(smax, device=device)
    valid = slot.unsqueeze(0) < torch.tensor(sizes, device=device).unsqueeze(1)
    idx = (starts.unsqueeze(1) + slot.unsqueeze(0)).clamp(max=n_tokens - 1)
    return idx, valid


def holov_chunk_scores(
    x: torch.Tensor, cls_attn: torch.Tensor, sizes: list[int], var_includes_self: bool = False
) -> torch.Tensor:
    """Chunk scores.  x (B, N, D), cls_attn (B, N) -> (B, C) float32."""
    B, N, _ = x.shape
    idx, valid = _padded_chunks(N, sizes, x.device)  # (C, smax)
    C, smax = idx.shape
    xn = normalize(x)[:, idx.flatten()].view(B, C, smax, -1)  # (B, C, smax, D)
    pair = valid.unsqueeze(2) & valid.unsqueeze(1) & ~torch.eye(smax, dtype=torch.bool, device=x.device)
    S = (xn @ xn.transpose(-1, -2)) * pair  # (B, C, smax, smax), diagonal and pads zeroed
    size = torch.tensor(sizes, dtype=torch.float32, device=x.device)  # (C,)
    others = (size - 1).clamp(min=1).view(1, C, 1)
    mean = S.sum(-1) / others  # (B, C, smax)
    var = (((S - mean.unsqueeze(-1)) ** 2) * pair).sum(-1) / others
    if var_includes_self:
        var = var + mean**2 / others
    var = var * valid  # size-1 chunks and pads: 0
    a = ATTN_SCALE * cls_attn.float()[:, idx.flatten()].view(B, C, smax) * valid
    mean_abs_a = a.abs().sum(-1) / size  # (B, C)
    mean_abs_var = var.abs().sum(-1) / size
    token_score = a + VAR_WEIGHT * var * (mean_abs_a / (mean_abs_var + EPS)).unsqueeze(-1)
    return (token_score * valid).sum(-1) / size  # (B, C)


def holov_allocate(chunk_scores: torch.Tensor, sizes: list[int], k: int) -> torch.Tensor:
    """Budget per chunk.  chunk_scores (B, C) -> (B, C) long summing to k, each <= its size."""
    B, C = chunk_scores.shape
    cap = torch.tensor(sizes, dtype=torch.long, device=chunk_scores.device).expand(B, C)
    if k > int(cap[0].sum()):
        raise ValueError(f"holov: k={k} exceeds the N={int(cap[0].sum())} tokens")
    w = chunk_scores / (chunk_scores.sum(-1, keepdim=True) + EPS)  # (B, C)
    alloc = torch.floor(w * k).long()
    order = argsort_desc(w)  # (B, C) chunks by weight, ties -> lowest chunk
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(C, device=w.device).expand(B, C))
    remainder = (k - alloc.sum(-1, keepdim=True)).clamp(min=0)  # (B, 1)
    alloc = alloc + (rank < remainder).long()
    alloc = torch.minimum(alloc, cap)
    shortfall = k - alloc.sum(-1)  # (B,)
    for j in range(C):  # highest weight first
        c = order[:, j : j + 1]  # (B, 1)
        room = (cap.gather(1, c) - alloc.gather(1, c)).squeeze(1)
        give = torch.minimum(room, shortfall)
        alloc.scatter_add_(1, c, give.unsqueeze(1))
        shortfall = shortfall - give
    return alloc


def holov_select(
    x: torch.Tensor,
    cls_attn: torch.Tensor,
    k: int,
    num_chunks: int = 16,
    var_includes_self: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, N, D) projected, cls_attn (B, N) ->
    (kept (B, k) ascending, dropped (B, N - k) ranked by cls_attn descending, ties -> lowest)."""
    B, N, _ = x.shape
    if not 0 <= k <= N:
        raise ValueError(f"holov: k={k} must be in 0..N={N}")
    sizes = chunk_sizes(N, num_chunks)
    alloc = holov_allocate(holov_chunk_scores(x, cls_attn, sizes, var_includes_self), sizes, k)  # (B, C)
    idx, valid = _padded_chunks(N, sizes, x.device)
    C, smax = idx.shape
    a = cls_attn.float()[:, idx.flatten()].view(B, C, smax).masked_fill(~valid, float("-inf"))
    order = argsort_desc(a)  # (B, C, smax) within-chunk, ties -> lowest slot
    rank = torch.empty_like(order).scatter_(2, order, torch.arange(smax, device=x.device).expand(B, C, smax))
    keep = (rank < alloc.unsqueeze(-1)) & valid  # (B, C, smax)
    keep_tok = keep.flatten(1)[:, valid.flatten()]  # (B, N): valid slots are tokens 0..N-1 in order
    kept = mask_to_indices(keep_tok, k)
    dropped = complement(kept, N)  # ascending
    by_attn = argsort_desc(cls_attn.float().gather(1, dropped))
    return kept, dropped.gather(1, by_attn)


@register_reducer("holov")
class HoloV(Reducer):
    needs_cls_attn = True

    def select(self, inp: ReductionInputs, k: int) -> Selection:
        kept, dropped = holov_select(inp.feats, inp.cls_attn, k, inp.cfg.holov_num_chunks)
        return Selection(kept, dropped)
