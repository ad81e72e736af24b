"""The main entry point: reduce N projected visual tokens to n (spec §1-§4)."""
from __future__ import annotations

from typing import Optional

import torch

from .anchors import ANCHOR_RULES
from .base import ReductionInputs
from .common import resolve_seed
from .config import ReductionConfig
from .positions import build_result, identity_result
from .registry import get_reducer, known_reducers
from .types import ReductionResult


def _check_inputs(feats, vis_feats, cls_attn, reducer, method: str) -> None:
    if feats.dim() != 3:
        raise ValueError(f"feats must be (B, N, D), got shape {tuple(feats.shape)}")
    B, N, _ = feats.shape
    if reducer.needs_cls_attn:
        if cls_attn is None:
            raise ValueError(f"method {method!r} needs cls_attn (B, N) = (B, {N}); got None")
        if tuple(cls_attn.shape) != (B, N):
            raise ValueError(f"cls_attn shape {tuple(cls_attn.shape)} != (B, N) = {(B, N)}")
        if bool((cls_attn < 0).any()):
            raise ValueError(f"cls_attn for method {method!r} must be attention probabilities (>= 0)")
    if reducer.needs_vis_feats:
        if vis_feats is None:
            raise ValueError(f"method {method!r} needs vis_feats (B, N, Dv) with N={N}; got None")
        if vis_feats.dim() != 3 or tuple(vis_feats.shape[:2]) != (B, N):
            raise ValueError(f"vis_feats shape {tuple(vis_feats.shape)} != (B, N, Dv) with (B, N) = {(B, N)}")


def reduce_visual_tokens(
    feats: torch.Tensor,
    cfg: ReductionConfig,
    *,
    vis_feats: Optional[torch.Tensor] = None,
    cls_attn: Optional[torch.Tensor] = None,
    grid_hw: Optional[tuple[int, int]] = None,
    generator: Optional[torch.Generator] = None,
) -> ReductionResult:
    """Reduce feats (B, N, D) to n = cfg.n_vis tokens per sample.

    vis_feats (B, N, Dv): pre-projector features of the same layer (VisPruner's similarity).
    cls_attn (B, N): CLS->patch attention averaged over heads (VisPruner, HoloV, VisionZip).
    grid_hw: the patch grid (H, W) (uniform; default: square).
    generator: when given, one draw from it replaces cfg.seed (random / kmeans); the same seed
    is used for every sample, so no sample's result depends on the rest of its batch.
    Stage A keeps n_keep = floor(n * split_ratio) (merge on) or n tokens; Stage B merges the
    pruned ones into n - n_keep anchors.  Output ordered by representative position.
    """
    if cfg.merge is None or cfg.position_mode is None:
        raise ValueError("reduce_visual_tokens needs a resolved ReductionConfig (call cfg.resolve())")
    if feats.dim() != 3:
        raise ValueError(f"feats must be (B, N, D), got shape {tuple(feats.shape)}")
    B, N, _ = feats.shape
    n = N if cfg.n_vis is None else int(cfg.n_vis)
    if not 1 <= n <= N:
        raise ValueError(f"ReductionConfig.n_vis={cfg.n_vis} must be in 1..N={N}")
    cfg.validate()
    if cfg.anchor_rule not in ANCHOR_RULES:
        raise ValueError(f"ReductionConfig.anchor_rule={cfg.anchor_rule!r} is not one of {sorted(ANCHOR_RULES)}")
    if cfg.method == "none":
        if n != N:
            raise ValueError(f"method 'none' keeps all N={N} tokens but n_vis={n}; choose one of {known_reducers()}")
        return identity_result(feats)
    if cfg.method not in known_reducers():
        raise ValueError(f"ReductionConfig.method={cfg.method!r} is unknown; known: {['none'] + known_reducers()}")
    reducer = get_reducer(cfg.method)
    if n == N and not cfg.merge:
        return identity_result(feats)
    _check_inputs(feats, vis_feats, cls_attn, reducer, cfg.method)
    inp = ReductionInputs(
        feats=feats,
        cfg=cfg,
        seed=resolve_seed(cfg.seed, generator),
        vis_feats=vis_feats,
        cls_attn=cls_attn,
        grid_hw=grid_hw,
    )
    source = reducer.partition(inp, n)  # (B, N) in [-1, n)
    return build_result(feats, source, n, cfg.position_rep)
