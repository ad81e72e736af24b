"""VisionZip: dominant tokens by CLS attention + contextual tokens merged by similarity.

Without Stage B (merge off), as the official code (dvlab-research/VisionZip) runs it inside the
vision tower, before the projector (every step an option, defaults = the reference):
  counts    n_dom = floor(n * visionzip_dominant_ratio) dominant tokens (54 of 64, 108 of 128,
            162 of 192), n_ctx = n - n_dom contextual ones.
  dominant  the CLS token + the n_dom - 1 patches with the highest CLS attention of the selected
            layer (the reference sums it over heads; the head mean ranks the same)
            (``visionzip_cls=False``: n_dom patches, no CLS token).
  targets   the other R patches in ascending order; targets at ranks 0, step, 2*step, ...
            (step = max(1, R // n_ctx)), the first n_ctx of them.
  assign    every other remaining patch joins its most similar target: cosine of that layer's
            attention keys averaged over heads (``visionzip_metric=projected``: of the
            projected features); ties -> lowest target.
  merge     a contextual token is target + mean(its other members) of the pre-projector
            features, then projected (a target without members stays itself)
            (``visionzip_merge=mean``: the mean of target and members of the projected features).
  order     [CLS, dominant patches ascending, contextual tokens in target order]
            (``token_order=position``: by representative position, the CLS token first).
A member map cannot hold the CLS token; it is an *extra* output token (ReductionResult.extra) of
size 1 with no patch members, so ``position_mode=retain`` cannot place it (an error).

With Stage B (merge on, +RESTORE): Stage A keeps the n_keep patches with the highest CLS
attention (no CLS token) and RESTORE's anchor merging replaces the contextual step; none of the
visionzip_* options but the CLS attention apply.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .base import Partition, Reducer, ReductionInputs, Selection
from .common import complement, floor_fraction, gather_rows, group_sums, normalize, topk_desc
from .registry import register_reducer
from .types import CLS_INDEX, PATCH


def visionzip_counts(n: int, dominant_ratio: float, include_cls: bool) -> tuple[bool, int, int]:
    """(CLS token kept, dominant patches, contextual tokens) for an output budget of n.

    The CLS token is one of the n_dom dominant tokens; with n_dom = 0 there is none (the
    reference cannot run that budget)."""
    if not 0.0 <= dominant_ratio <= 1.0:
        raise ValueError(f"visionzip: dominant_ratio={dominant_ratio} must be in [0, 1]")
    n_dom = floor_fraction(n, dominant_ratio)
    cls = include_cls and n_dom >= 1
    return cls, n_dom - int(cls), n - n_dom


def visionzip_groups(
    metric: torch.Tensor, cls_attn: torch.Tensor, n_dom: int, n_ctx: int, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dominant patches and contextual groups.

    metric (B, N, d) similarity features, cls_attn (B, N) ->
    (source (B, N) long: groups offset..offset+n_dom-1 = the dominant patches ascending,
       offset+n_dom.. = the contextual groups in target order, -1 when n_ctx == 0 for the rest;
     anchors (B, n_dom + n_ctx) long: each group's own patch (dominant: itself; contextual: its
       target), in group order).
    """
    B, N, _ = metric.shape
    if n_dom < 0 or n_ctx < 0 or n_dom + n_ctx > N:
        raise ValueError(f"visionzip: {n_dom} dominant + {n_ctx} contextual tokens do not fit N={N}")
    dev = metric.device
    dominant = torch.sort(topk_desc(cls_attn.float(), n_dom), dim=1).values  # (B, n_dom) ascending
    source = torch.full((B, N), -1, dtype=torch.long, device=dev)
    source.scatter_(1, dominant, offset + torch.arange(n_dom, device=dev).expand(B, n_dom))
    if n_ctx == 0:
        return source, dominant
    rest = complement(dominant, N)  # (B, R) ascending
    R = rest.shape[1]
    step = max(1, R // n_ctx)
    target_rank = torch.arange(0, R, step, device=dev)[:n_ctx]  # (n_ctx,)
    rn = normalize(gather_rows(metric, rest))  # (B, R, d)
    sim = rn @ rn[:, target_rank].transpose(1, 2)  # (B, R, n_ctx)
    assign = sim.argmax(dim=-1)  # (B, R) ties -> lowest target
    assign[:, target_rank] = torch.arange(n_ctx, device=dev)  # targets -> themselves
    source.scatter_(1, rest, offset + n_dom + assign)
    return source, torch.cat([dominant, rest[:, target_rank]], dim=1)


def visionzip_partition(
    x: torch.Tensor, cls_attn: torch.Tensor, n: int, dominant_ratio: float, include_cls: bool = False
) -> torch.Tensor:
    """x (B, N, d) similarity features, cls_attn (B, N) -> member map (B, N) in [-1, n).

    Group 0 is the CLS token (no members) when it is kept, then the dominant patches ascending,
    then the contextual groups in target order; every patch is covered unless n_ctx == 0
    (dominant_ratio = 1), when the rest is dropped (-1)."""
    B, N, _ = x.shape
    if not 1 <= n <= N:
        raise ValueError(f"visionzip: n={n} must be in 1..N={N}")
    cls, n_dom, n_ctx = visionzip_counts(n, dominant_ratio, include_cls)
    return visionzip_groups(x, cls_attn, n_dom, n_ctx, offset=int(cls))[0]


def visionzip_tokens(
    vis_feats: torch.Tensor, source: torch.Tensor, anchors: torch.Tensor, vis_cls: Optional[torch.Tensor]
) -> torch.Tensor:
    """The reference's pre-projector output tokens: [CLS?, anchor + mean(other members) per group].

    vis_feats (B, N, Dv), source (B, N) in [-1, n) with groups n - G.. = the G groups of
    ``anchors`` (B, G), vis_cls (B, Dv) or None -> (B, n, Dv) float32 (n = G + 1 with CLS).
    """
    B, N, _ = vis_feats.shape
    G = anchors.shape[1]
    offset = int(vis_cls is not None)
    others = source.scatter(1, anchors, -1)  # (B, N) members other than each group's own patch
    local = torch.where(others >= 0, others - offset, others)  # group ids 0..G-1
    sums, counts = group_sums(vis_feats, local, G)  # (B, G, Dv), (B, G)
    tokens = gather_rows(vis_feats, anchors).float() + sums / counts.clamp(min=1).unsqueeze(-1)
    if vis_cls is not None:
        tokens = torch.cat([vis_cls.float().unsqueeze(1), tokens], dim=1)
    return tokens


def _project(projector: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """tokens (B, m, Dv) -> projected (B, m, D) in ``like``'s dtype."""
    return projector(tokens).to(like.dtype)


@register_reducer("visionzip")
class VisionZip(Reducer):
    needs_cls_attn = True
    emits_order = True

    def needs(self, cfg) -> tuple[str, ...]:
        if cfg.merge:
            return ("cls_attn",)
        need = ["cls_attn"]
        if cfg.visionzip_metric == "keys":
            need.append("attn_keys")
        if cfg.visionzip_merge == "reference":
            need += ["vis_feats", "projector"]
        if cfg.visionzip_cls:
            need += ["vis_cls", "projector"]
        return tuple(dict.fromkeys(need))

    def select(self, inp: ReductionInputs, k: int) -> Selection:
        kept = topk_desc(inp.cls_attn.float(), k)
        return Selection(kept, complement(kept, inp.feats.shape[1]))

    def partition(self, inp: ReductionInputs, n: int) -> Partition:
        c = inp.cfg
        if c.merge:
            return super().partition(inp, n)
        cls, n_dom, n_ctx = visionzip_counts(n, c.visionzip_dominant_ratio, c.visionzip_cls)
        if cls and c.position_mode == "retain":
            raise ValueError("visionzip with visionzip_cls=true hands the CLS token to the LLM, which has no patch "
                             "position; position_mode=retain needs one (set visionzip_cls=false or position_mode=reindex)")
        metric = inp.attn_keys if c.visionzip_metric == "keys" else inp.feats
        source, anchors = visionzip_groups(metric, inp.cls_attn, n_dom, n_ctx, offset=int(cls))
        B = source.shape[0]
        extra = None
        if cls:
            extra = torch.full((B, n), PATCH, dtype=torch.long, device=source.device)
            extra[:, 0] = CLS_INDEX
        if c.visionzip_merge == "reference":
            tokens = visionzip_tokens(inp.vis_feats, source, anchors, inp.vis_cls if cls else None)  # (B, n, Dv)
            features = _project(inp.projector, tokens.to(inp.vis_feats.dtype), inp.feats)
            return Partition(source, features=features, extra=extra)
        if not cls:
            return Partition(source)  # outputs = the mean of their members (build_result)
        sums, counts = group_sums(inp.feats, source, n)  # (B, n, D): group 0 (CLS) is empty
        features = (sums / counts.clamp(min=1).unsqueeze(-1)).to(inp.feats.dtype)
        cls_tok = _project(inp.projector, inp.vis_cls.unsqueeze(1), inp.feats)  # (B, 1, D)
        return Partition(source, features=torch.cat([cls_tok, features[:, 1:]], dim=1), extra=extra)
