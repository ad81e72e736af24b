"""HoloV (spec §1): budget allocated across contiguous chunks by a holistic chunk score.

Defaults reproduce the reference implementation (RESTORE's ``HoloV_with_Indices``, itself HoloV's
official scoring with a redistribution step); each other variant is an option.

Chunks: the flattened sequence cut into ``num_chunks`` contiguous pieces, the first N % C one
token longer (36 each for N = 576, C = 16).  Inside a chunk of s tokens:
  x_hat = x / (|x| + 1e-6) (the reference's normalisation);
  S = x_hat x_hat^T with the diagonal zeroed;
  mean_i = sum_j S_ij / (s - 1);
  var_i = sum_j (S_ij - mean_i)^2 / (s - 1) over the *whole* row, the zeroed diagonal's
          (0 - mean_i)^2 included (``var_excludes_self=True``: over the other tokens only);
  score_i = 1000 a_i + 0.09 var_i * mean_c|1000 a| / (mean_c|var| + 1e-6);
  chunk score = mean_c score_i; a chunk of one token scores its raw a
  (``single_token_scaled=True``: 1000 a).
Allocation of k: w_c = score_c / (sum score + 1e-6); floor(w_c k); the remainder +1 each to the
highest weights; then the excess over the chunk sizes is clamped and handed out again:
  redistribute='reference': rounds of +1 to each of the top-`deficit` chunks with room, by weight;
  redistribute='fill': the chunks with room in weight order, each filled as far as the deficit goes.
Each chunk keeps its top tokens by a.  Output order (the reference's): chunk by chunk; inside a
partly kept chunk by a descending, a fully kept chunk in index order.  Dropped tokens are ranked
by a descending (the order Stage B receives them in).  Ties -> lowest index everywhere.
"""
from __future__ import annotations

import torch

from .base import Reducer, ReductionInputs, Selection
from .common import argsort_desc, complement
from .config import HOLOV_REDISTRIBUTIONS
from .registry import register_reducer

ATTN_SCALE = 1000.0
VAR_WEIGHT = 0.09
EPS = 1e-6  # the reference's epsilon (normalisation, variance scaling, weights)


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
    x: torch.Tensor,
    cls_attn: torch.Tensor,
    sizes: list[int],
    var_excludes_self: bool = False,
    single_token_scaled: bool = False,
) -> torch.Tensor:
    """Chunk scores.  x (B, N, D), cls_attn (B, N) -> (B, C) float32."""
    B, N, _ = x.shape
    idx, valid = _padded_chunks(N, sizes, x.device)  # (C, smax)
    C, smax = idx.shape
    xf = x.float()
    xn = xf / (xf.norm(dim=-1, keepdim=True) + EPS)  # (B, N, D), the reference's normalisation
    xn = xn[:, idx.flatten()].view(B, C, smax, -1)  # (B, C, smax, D)
    pair = valid.unsqueeze(2) & valid.unsqueeze(1) & ~torch.eye(smax, dtype=torch.bool, device=x.device)
    S = (xn @ xn.transpose(-1, -2)) * pair  # (B, C, smax, smax), diagonal and pads zeroed
    size = torch.tensor(sizes, dtype=torch.float32, device=x.device)  # (C,)
    others = (size - 1).clamp(min=1).view(1, C, 1)
    mean = S.sum(-1) / others  # (B, C, smax)
    row = pair if var_excludes_self else valid.unsqueeze(2) & valid.unsqueeze(1)  # entries of the variance
    var = (((S - mean.unsqueeze(-1)) ** 2) * row).sum(-1) / others
    var = var * valid  # pads: 0
    a = ATTN_SCALE * cls_attn.float()[:, idx.flatten()].view(B, C, smax) * valid
    mean_abs_a = a.abs().sum(-1) / size  # (B, C)
    mean_abs_var = var.abs().sum(-1) / size
    token_score = a + VAR_WEIGHT * var * (mean_abs_a / (mean_abs_var + EPS)).unsqueeze(-1)
    scores = (token_score * valid).sum(-1) / size  # (B, C)
    if not single_token_scaled:
        single = size == 1  # (C,) the reference scores a one-token chunk by its raw attention
        scores = torch.where(single, cls_attn.float()[:, idx[:, 0]], scores)
    return scores


def _rank(values: torch.Tensor) -> torch.Tensor:
    """Rank of every entry in a stable descending sort along the last dim.  (B, C) -> (B, C) long."""
    order = argsort_desc(values)
    return torch.empty_like(order).scatter_(1, order, torch.arange(values.shape[1], device=values.device).expand_as(order))


def holov_allocate(chunk_scores: torch.Tensor, sizes: list[int], k: int, redistribute: str = "reference") -> torch.Tensor:
    """Budget per chunk.  chunk_scores (B, C) -> (B, C) long summing to k, each <= its size."""
    if redistribute not in HOLOV_REDISTRIBUTIONS:
        raise ValueError(f"holov: redistribute={redistribute!r} is not one of {list(HOLOV_REDISTRIBUTIONS)}")
    B, C = chunk_scores.shape
    cap = torch.tensor(sizes, dtype=torch.long, device=chunk_scores.device).expand(B, C)
    if k > int(cap[0].sum()):
        raise ValueError(f"holov: k={k} exceeds the N={int(cap[0].sum())} tokens")
    w = chunk_scores / (chunk_scores.sum(-1, keepdim=True) + EPS)  # (B, C)
    alloc = torch.floor(w * k).long()
    remainder = (k - alloc.sum(-1, keepdim=True)).clamp(min=0)  # (B, 1)
    alloc = torch.minimum(alloc + (_rank(w) < remainder).long(), cap)
    if redistribute == "reference":
        for _ in range(k):  # each round gives at least one token while any is missing
            deficit = k - alloc.sum(-1, keepdim=True)  # (B, 1)
            if not bool((deficit > 0).any()):
                break
            room = alloc < cap  # (B, C)
            alloc = alloc + ((_rank(w.masked_fill(~room, float("-inf"))) < deficit) & room).long()
        return alloc
    order = argsort_desc(w)  # 'fill': highest weight first, each chunk filled as far as it goes
    shortfall = k - alloc.sum(-1)  # (B,)
    for j in range(C):
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
    var_excludes_self: bool = False,
    single_token_scaled: bool = False,
    redistribute: str = "reference",
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, N, D) projected, cls_attn (B, N) ->
    (kept (B, k) in the reference's output order: chunk by chunk, a partly kept chunk by a
     descending, a fully kept chunk ascending;
     dropped (B, N - k) ranked by cls_attn descending, ties -> lowest index)."""
    B, N, _ = x.shape
    if not 0 <= k <= N:
        raise ValueError(f"holov: k={k} must be in 0..N={N}")
    sizes = chunk_sizes(N, num_chunks)
    scores = holov_chunk_scores(x, cls_attn, sizes, var_excludes_self, single_token_scaled)
    alloc = holov_allocate(scores, sizes, k, redistribute)  # (B, C)
    idx, valid = _padded_chunks(N, sizes, x.device)
    C, smax = idx.shape
    a = cls_attn.float()[:, idx.flatten()].view(B, C, smax).masked_fill(~valid, float("-inf"))
    order = argsort_desc(a)  # (B, C, smax) within-chunk, ties -> lowest slot
    rank = torch.empty_like(order).scatter_(2, order, torch.arange(smax, device=x.device).expand(B, C, smax))
    keep = (rank < alloc.unsqueeze(-1)) & valid  # (B, C, smax)
    full = (alloc == torch.tensor(sizes, device=x.device)).unsqueeze(-1)  # (B, C, 1) chunk kept whole
    slot = torch.arange(smax, device=x.device)
    within = torch.where(full, slot, rank)  # (B, C, smax) rank of a kept token in its chunk's output
    chunk = torch.arange(C, device=x.device).view(1, C, 1)
    key = torch.where(keep, chunk * smax + within, C * smax)  # emission order; not kept -> last
    emit = torch.sort(key.flatten(1), dim=1, stable=True).indices[:, :k]  # (B, k) flat slots
    kept = idx.flatten().expand(B, -1).gather(1, emit)  # (B, k) token indices
    dropped = complement(kept, N)  # ascending
    by_attn = argsort_desc(cls_attn.float().gather(1, dropped))
    return kept, dropped.gather(1, by_attn)


@register_reducer("holov")
class HoloV(Reducer):
    needs_cls_attn = True
    emits_order = True

    def select(self, inp: ReductionInputs, k: int) -> Selection:
        c = inp.cfg
        kept, dropped = holov_select(inp.feats, inp.cls_attn, k, c.holov_num_chunks, c.holov_var_excludes_self,
                                     c.holov_single_token_scaled, c.holov_redistribute)
        return Selection(kept, dropped)
