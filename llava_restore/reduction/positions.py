"""Spec §3-§4: turn a member map into the ReductionResult (features, sizes, positions, order).

A *member map* ``source`` (B, N) gives, for every original token t, the output group in
[0, n) it belongs to, or -1 when it was dropped.  Everything else is derived from it.
"""
from __future__ import annotations

from typing import Optional

import torch

from .common import gather_rows, row_sums
from .config import POSITION_REPS
from .types import EXTRA_POSITION, PATCH, ReductionResult


def _sorted_members(source: torch.Tensor, n: int, may_be_empty: Optional[torch.Tensor] = None):
    """Originals grouped by output token, ascending inside each group.

    may_be_empty (B, n) bool: output tokens allowed to have no member (non-patch tokens).
    Returns (member_t (B, N) long: original indices sorted by (group, t), dropped last;
             counts (B, n) long; starts (B, n) long: offset of each group in member_t).
    """
    B, N = source.shape
    t = torch.arange(N, device=source.device).expand(B, N)
    group = torch.where(source >= 0, source, torch.full_like(source, n))  # dropped -> group n
    key = torch.sort(group * N + t, dim=1).values  # (B, N)
    member_t = key % N
    counts = torch.zeros(B, n + 1, dtype=torch.long, device=source.device)
    counts.scatter_add_(1, group, torch.ones_like(group))
    counts = counts[:, :n]
    empty = counts == 0
    if may_be_empty is not None:
        empty = empty & ~may_be_empty
    bad = empty.nonzero()
    if bad.numel():
        b, j = bad[0].tolist()
        raise ValueError(f"output token {j} of sample {b} has no members (n={n}, N={N})")
    starts = torch.cumsum(counts, dim=1) - counts
    return member_t, counts, starts


def representative_positions(
    source: torch.Tensor, n: int, rep: str = "median", is_extra: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Representative patch index of each output token over its members (spec §4).

    first: smallest member; last: largest; median: the *lower* median, element (s-1)//2 of the
    sorted members; mean: their average (fractional).  Non-patch tokens (``is_extra``, no
    members) get EXTRA_POSITION.
    source (B, N) long in [-1, n), is_extra (B, n) bool or None -> (B, n) float32.
    """
    if rep not in POSITION_REPS:
        raise ValueError(f"position_rep={rep!r} is not one of {list(POSITION_REPS)}")
    member_t, counts, starts = _sorted_members(source, n, is_extra)
    if rep == "mean":
        B, N = source.shape
        t = torch.arange(N, device=source.device, dtype=torch.float64).expand(B, N)
        group = torch.where(source >= 0, source, torch.full_like(source, n))
        sums = torch.zeros(B, n + 1, dtype=torch.float64, device=source.device)
        sums.scatter_add_(1, group, t)
        pos = (sums[:, :n] / counts.clamp(min=1)).float()
    else:
        offset = {"first": starts, "last": starts + counts - 1, "median": starts + (counts - 1) // 2}[rep]
        pos = member_t.gather(1, offset.clamp(0, source.shape[1] - 1)).float()
    if is_extra is not None:
        pos = pos.masked_fill(is_extra, EXTRA_POSITION)
    return pos


def group_sizes(source: torch.Tensor, n: int, is_extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Number of originals each output token stands for: its members, or 1 for a non-patch token.

    source (B, N), is_extra (B, n) bool or None -> (B, n) float32.
    """
    B, _ = source.shape
    group = torch.where(source >= 0, source, torch.full_like(source, n))
    sizes = torch.zeros(B, n + 1, dtype=torch.float32, device=source.device)
    sizes.scatter_add_(1, group, torch.ones_like(group, dtype=torch.float32))
    sizes = sizes[:, :n]
    if is_extra is not None:
        sizes = sizes.masked_fill(is_extra, 1.0)
    return sizes


def build_result(
    feats: torch.Tensor,
    source: torch.Tensor,
    n: int,
    rep: str,
    *,
    by_position: bool = True,
    features: Optional[torch.Tensor] = None,
    extra: Optional[torch.Tensor] = None,
) -> ReductionResult:
    """Turn a member map into the result: sizes, positions, features and the output order.

    feats (B, N, D) projected; source (B, N) long in [-1, n): output group of every patch.
    by_position: order the outputs by (position, lowest member index); otherwise keep the group
      ids' order (the base method's own output order).
    features (B, n, D): the groups' output features when they are not the mean of their members
      (VisionZip's target + mean before the projector, the CLS token); default: the mean of the
      members = the size-weighted mean of spec §2.6 (all input sizes 1), in float32, cast back.
    extra (B, n) long: per group, the vision tower's sequence index of a non-patch token
      (CLS_INDEX), PATCH otherwise; such groups have no members and need ``features``.
    """
    B, N, _ = feats.shape
    dev = source.device
    is_extra = None if extra is None else extra != PATCH  # (B, n)
    if is_extra is not None and features is None and bool(is_extra.any()):
        raise ValueError("build_result: non-patch output tokens need their features")
    positions = representative_positions(source, n, rep, is_extra)  # (B, n); checks no empty group
    sizes = group_sizes(source, n, is_extra)  # (B, n)
    if by_position:
        group = torch.where(source >= 0, source, torch.full_like(source, n))  # (B, N)
        first = torch.full((B, n + 1), N, dtype=torch.long, device=dev)
        first.scatter_reduce_(1, group, torch.arange(N, device=dev).expand(B, N), reduce="amin")
        first = first[:, :n]
        # order by position, ties by lowest member: stable sort by first, then stable by position
        by_first = torch.sort(first, dim=1, stable=True).indices  # (B, n)
        by_pos = torch.sort(positions.gather(1, by_first), dim=1, stable=True).indices
        order = by_first.gather(1, by_pos)  # (B, n): old group id at each new slot
    else:
        order = torch.arange(n, device=dev).expand(B, n)
    new_id = torch.empty_like(order)
    new_id.scatter_(1, order, torch.arange(n, device=dev).expand(B, n))
    new_source = torch.where(source >= 0, new_id.gather(1, source.clamp(min=0)), source)
    new_sizes = sizes.gather(1, order)
    if features is None:
        new_group = torch.where(new_source >= 0, new_source, torch.full_like(new_source, n))
        sums = row_sums(feats, new_group, n + 1)  # (B, n + 1, D) float32, the dropped in the last
        out_feats = (sums[:, :n] / new_sizes.unsqueeze(-1)).to(feats.dtype)
    else:
        if tuple(features.shape[:2]) != (B, n):
            raise ValueError(f"build_result: features shape {tuple(features.shape)} != (B, n, D) with (B, n)={(B, n)}")
        out_feats = gather_rows(features, order)
    return ReductionResult(
        features=out_feats,
        source=new_source,
        sizes=new_sizes,
        positions=positions.gather(1, order),
        extra=None if extra is None else extra.gather(1, order),
    )


def identity_result(feats: torch.Tensor) -> ReductionResult:
    """All N tokens, unchanged, in order (method 'none', or n == N without merging)."""
    B, N, _ = feats.shape
    t = torch.arange(N, device=feats.device)
    return ReductionResult(
        features=feats,
        source=t.expand(B, N).clone(),
        sizes=torch.ones(B, N, dtype=torch.float32, device=feats.device),
        positions=t.float().expand(B, N).clone(),
    )
