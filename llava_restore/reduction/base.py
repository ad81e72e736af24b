"""The reducer interface and the Stage A -> Stage B composition (spec §1-§2).

A reducer turns the inputs into a ``Partition``: a *member map* (B, N) giving the output token
each original patch belongs to (or -1 if dropped), with the group ids in the method's own output
order, plus, for methods that need them, the output features and non-patch tokens (VisionZip's
CLS token).  Pruners only implement ``select`` (Stage A); the base class adds Stage B.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .anchors import anchor_merge
from .common import floor_fraction, gather_rows
from .config import ReductionConfig


@dataclass
class ReductionInputs:
    feats: torch.Tensor  # (B, N, D) projected features
    cfg: ReductionConfig  # resolved
    seed: int  # the per-sample seed (identical for every sample)
    vis_feats: Optional[torch.Tensor] = None  # (B, N, Dv) pre-projector features, same layer
    cls_attn: Optional[torch.Tensor] = None  # (B, N) CLS->patch attention, head-averaged
    grid_hw: Optional[tuple[int, int]] = None  # patch grid (H, W), H * W = N
    vis_cls: Optional[torch.Tensor] = None  # (B, Dv) the CLS token's pre-projector feature, same layer
    attn_keys: Optional[torch.Tensor] = None  # (B, N, dk) that layer's attention keys of the patches, head-averaged
    projector: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # (B, m, Dv) -> (B, m, D): mm_projector


@dataclass
class Selection:
    kept: torch.Tensor  # (B, k) long, kept originals, in the method's own output order
    dropped: torch.Tensor  # (B, N - k) long, the rest, in the order Stage B receives them


@dataclass
class Partition:
    """What a reducer hands to the bookkeeping (positions.build_result)."""

    source: torch.Tensor  # (B, N) long in [-1, n): group of every patch; ids in the method's output order
    features: Optional[torch.Tensor] = None  # (B, n, D) when the outputs are not the mean of their members
    extra: Optional[torch.Tensor] = None  # (B, n) long: tower index of a non-patch output (types.CLS_INDEX), else -1


class Reducer:
    name = ""
    needs_cls_attn = False
    needs_vis_feats = False
    # True when the reference implementation emits the kept tokens in an order of its own
    # (DivPrune: pick order, HoloV: chunk order, VisionZip: [CLS, dominant, contextual]); the
    # group ids of ``partition`` follow it.  False: the reference emits them by patch index.
    emits_order = False

    def needs(self, cfg) -> tuple[str, ...]:
        """Names of the ReductionInputs fields this method needs under ``cfg``."""
        return tuple(name for name, on in (("cls_attn", self.needs_cls_attn), ("vis_feats", self.needs_vis_feats)) if on)

    def select(self, inp: ReductionInputs, k: int) -> Selection:
        """Stage A: keep k of the N tokens."""
        raise NotImplementedError(f"reducer {self.name!r} has no Stage A selection")

    def partition(self, inp: ReductionInputs, n: int) -> Partition:
        """The partition for an output budget of n tokens (member map values in [-1, n))."""
        cfg = inp.cfg
        n_keep = floor_fraction(n, cfg.split_ratio) if cfg.merge else n
        sel = self.select(inp, n_keep)
        return Partition(stage_b(inp, sel, n - n_keep if cfg.merge else 0))


def stage_b(inp: ReductionInputs, sel: Selection, n_merge: int) -> torch.Tensor:
    """Kept tokens get groups 0..k-1 in ``sel.kept`` order; the pruned ones merge into n_merge
    anchors (groups k..).  Returns the member map (B, N).

    With n_merge == 0 or nothing pruned, nothing is merged: pruned tokens get -1.
    """
    B, N, _ = inp.feats.shape
    k = sel.kept.shape[1]
    dev = inp.feats.device
    source = torch.full((B, N), -1, dtype=torch.long, device=dev)
    source.scatter_(1, sel.kept, torch.arange(k, device=dev).expand(B, k))
    M = sel.dropped.shape[1]
    if n_merge == 0 or M == 0:
        return source
    y = gather_rows(inp.feats, sel.dropped)  # (B, M, D)
    _, assignment = anchor_merge(
        y,
        n_merge,
        inp.cfg.anchor_rule,
        seed=inp.seed,
        token_index=sel.dropped,
        kmeans_iters=inp.cfg.kmeans_iters,
    )
    source.scatter_(1, sel.dropped, k + assignment)
    return source
