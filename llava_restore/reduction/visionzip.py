"""VisionZip: dominant tokens by CLS attention + contextual tokens merged by similarity.

Without Stage B (merge off): n_dom = floor(n * visionzip_dominant_ratio) tokens with the highest
CLS attention are kept (54 of 64 at the default 54/64); the other R tokens, in ascending patch
order, yield n_ctx = n - n_dom contextual tokens: targets at ranks 0, step, 2*step, ...
(step = max(1, R // n_ctx), first n_ctx of them); every other remaining token joins its most
similar target (cosine, ties -> lowest target); a contextual token is the mean of its target and
members.

Deviations from the reference code (documented in docs/restore.md): the similarity uses the
projected features (the reference uses the CLIP attention keys of the selected layer, which the
vision tower does not expose), the CLS token is not among the dominant tokens (LLaVA-1.5 drops
it), and a contextual token is the *mean* of target and members (the reference adds the target to
the members' mean, before the projector) so that sizes and features stay consistent.

With Stage B (merge on): the dominant tokens are Stage A (n_keep of them) and RESTORE's anchor
merging replaces the contextual step.
"""
from __future__ import annotations

import torch

from .base import Reducer, ReductionInputs, Selection
from .common import complement, floor_fraction, gather_rows, normalize, topk_desc
from .registry import register_reducer


def visionzip_partition(x: torch.Tensor, cls_attn: torch.Tensor, n: int, dominant_ratio: float) -> torch.Tensor:
    """x (B, N, D), cls_attn (B, N) -> member map (B, N) in [-1, n).

    Groups 0..n_dom-1 are the dominant tokens, n_dom.. the contextual ones; every original is
    covered unless n_ctx == 0 (dominant_ratio = 1), when the rest is dropped (-1).
    """
    B, N, _ = x.shape
    if not 1 <= n <= N:
        raise ValueError(f"visionzip: n={n} must be in 1..N={N}")
    if not 0.0 <= dominant_ratio <= 1.0:
        raise ValueError(f"visionzip: dominant_ratio={dominant_ratio} must be in [0, 1]")
    n_dom = floor_fraction(n, dominant_ratio)
    n_ctx = n - n_dom
    dev = x.device
    dominant = topk_desc(cls_attn.float(), n_dom)  # (B, n_dom)
    source = torch.full((B, N), -1, dtype=torch.long, device=dev)
    source.scatter_(1, dominant, torch.arange(n_dom, device=dev).expand(B, n_dom))
    if n_ctx == 0:
        return source
    rest = complement(dominant, N)  # (B, R) ascending
    R = rest.shape[1]
    step = max(1, R // n_ctx)
    target_rank = torch.arange(0, R, step, device=dev)[:n_ctx]  # (n_ctx,)
    rn = normalize(gather_rows(x, rest))  # (B, R, D)
    sim = rn @ rn[:, target_rank].transpose(1, 2)  # (B, R, n_ctx)
    assign = sim.argmax(dim=-1)  # (B, R) ties -> lowest target
    assign[:, target_rank] = torch.arange(n_ctx, device=dev)  # targets -> themselves
    source.scatter_(1, rest, n_dom + assign)
    return source


@register_reducer("visionzip")
class VisionZip(Reducer):
    needs_cls_attn = True

    def select(self, inp: ReductionInputs, k: int) -> Selection:
        kept = topk_desc(inp.cls_attn.float(), k)
        return Selection(kept, complement(kept, inp.feats.shape[1]))

    def partition(self, inp: ReductionInputs, n: int) -> torch.Tensor:
        if inp.cfg.merge:
            return super().partition(inp, n)
        return visionzip_partition(inp.feats, inp.cls_attn, n, inp.cfg.visionzip_dominant_ratio)
