"""Spec §3-§4: turn a member map into the ReductionResult (features, sizes, positions, order).

A *member map* ``source`` (B, N) gives, for every original token t, the output group in
[0, n) it belongs to, or -1 when it was dropped.  Everything else is derived from it.
"""
from __future__ import annotations

import torch

from .config import POSITION_REPS
from .types import ReductionResult


def _sorted_members(source: torch.Tensor, n: int):
    """Originals grouped by output token, ascending inside each group.

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
    empty = (counts == 0).nonzero()
    if empty.numel():
        b, j = empty[0].tolist()
        raise ValueError(f"output token {j} of sample {b} has no members (n={n}, N={N})")
    starts = torch.cumsum(counts, dim=1) - counts
    return member_t, counts, starts


def representative_positions(source: torch.Tensor, n: int, rep: str = "median") -> torch.Tensor:
    """Representative patch index of each output token over its members (spec §4).

    first: smallest member; last: largest; median: the *lower* median, element (s-1)//2 of the
    sorted members; mean: their average (fractional).
    source (B, N) long in [-1, n) -> (B, n) float32.
    """
    if rep not in POSITION_REPS:
        raise ValueError(f"position_rep={rep!r} is not one of {list(POSITION_REPS)}")
    member_t, counts, starts = _sorted_members(source, n)
    if rep == "mean":
        B, N = source.shape
        t = torch.arange(N, device=source.device, dtype=torch.float64).expand(B, N)
        group = torch.where(source >= 0, source, torch.full_like(source, n))
        sums = torch.zeros(B, n + 1, dtype=torch.float64, device=source.device)
        sums.scatter_add_(1, group, t)
        return (sums[:, :n] / counts).float()
    offset = {"first": starts, "last": starts + counts - 1, "median": starts + (counts - 1) // 2}[rep]
    return member_t.gather(1, offset).float()


def group_sizes(source: torch.Tensor, n: int) -> torch.Tensor:
    """Number of members of each output token.  (B, N) -> (B, n) float32."""
    B, _ = source.shape
    group = torch.where(source >= 0, source, torch.full_like(source, n))
    sizes = torch.zeros(B, n + 1, dtype=torch.float32, device=source.device)
    sizes.scatter_add_(1, group, torch.ones_like(group, dtype=torch.float32))
    return sizes[:, :n]


def build_result(feats: torch.Tensor, source: torch.Tensor, n: int, rep: str) -> ReductionResult:
    """Features = mean of members (= the size-weighted mean of spec §2.6, all input sizes 1),
    computed in float32 and cast back; outputs ordered by (position, lowest member index).

    feats (B, N, D), source (B, N) long in [-1, n).
    """
    B, N, D = feats.shape
    positions = representative_positions(source, n, rep)  # (B, n); also checks no empty group
    sizes = group_sizes(source, n)  # (B, n)
    group = torch.where(source >= 0, source, torch.full_like(source, n))  # (B, N)
    first = torch.full((B, n + 1), N, dtype=torch.long, device=source.device)
    first.scatter_reduce_(1, group, torch.arange(N, device=source.device).expand(B, N), reduce="amin")
    first = first[:, :n]

    # order by position, ties by lowest member: stable sort by first, then stable by position
    by_first = torch.sort(first, dim=1, stable=True).indices  # (B, n)
    by_pos = torch.sort(positions.gather(1, by_first), dim=1, stable=True).indices
    order = by_first.gather(1, by_pos)  # (B, n): old group id at each new slot
    new_id = torch.empty_like(order)
    new_id.scatter_(1, order, torch.arange(n, device=source.device).expand(B, n))

    new_source = torch.where(source >= 0, new_id.gather(1, source.clamp(min=0)), source)
    new_group = torch.where(new_source >= 0, new_source, torch.full_like(new_source, n))
    sums = torch.zeros(B, n + 1, D, dtype=torch.float32, device=feats.device)
    sums.scatter_add_(1, new_group.unsqueeze(-1).expand(B, N, D), feats.float())
    new_sizes = sizes.gather(1, order)
    features = (sums[:, :n] / new_sizes.unsqueeze(-1)).to(feats.dtype)
    return ReductionResult(
        features=features,
        source=new_source,
        sizes=new_sizes,
        positions=positions.gather(1, order),
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
