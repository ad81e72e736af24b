"""The main entry point: reduce N projected visual tokens to n (spec §1-§4)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .anchors import ANCHOR_RULES
from .base import ReductionInputs
from .common import resolve_seed
from .config import ReductionConfig
from .positions import build_result, identity_result
from .registry import get_reducer, known_methods, known_reducers
from .types import BudgetError, ReductionResult


def _check_inputs(inp: ReductionInputs, needed: tuple[str, ...], method: str) -> None:
    B, N, _ = inp.feats.shape
    for name in needed:
        value = getattr(inp, name)
        if value is None:
            what = {"cls_attn": f"cls_attn (B, N) = (B, {N})", "vis_feats": f"vis_feats (B, N, Dv) with N={N}",
                    "vis_cls": "vis_cls (B, Dv)", "attn_keys": f"attn_keys (B, N, dk) with N={N}",
                    "projector": "projector (the mm_projector, (B, m, Dv) -> (B, m, D))"}[name]
            raise ValueError(f"method {method!r} needs {what}; got None")
    if inp.cls_attn is not None and "cls_attn" in needed:
        if tuple(inp.cls_attn.shape) != (B, N):
            raise ValueError(f"cls_attn shape {tuple(inp.cls_attn.shape)} != (B, N) = {(B, N)}")
        if bool((inp.cls_attn < 0).any()):
            raise ValueError(f"cls_attn for method {method!r} must be attention probabilities (>= 0)")
    for name in ("vis_feats", "attn_keys"):
        value = getattr(inp, name)
        if value is not None and name in needed and (value.dim() != 3 or tuple(value.shape[:2]) != (B, N)):
            raise ValueError(f"{name} shape {tuple(value.shape)} != (B, N, d) with (B, N) = {(B, N)}")
    if inp.vis_cls is not None and "vis_cls" in needed:
        if inp.vis_cls.dim() != 2 or inp.vis_cls.shape[0] != B:
            raise ValueError(f"vis_cls shape {tuple(inp.vis_cls.shape)} != (B, Dv) with B = {B}")
        if inp.vis_feats is not None and inp.vis_cls.shape[-1] != inp.vis_feats.shape[-1]:
            raise ValueError(f"vis_cls width {inp.vis_cls.shape[-1]} != vis_feats width {inp.vis_feats.shape[-1]}")


def needed_inputs(cfg: ReductionConfig) -> tuple[str, ...]:
    """Names of the optional inputs of ``reduce_visual_tokens`` that ``cfg`` needs (e.g.
    ("cls_attn", "attn_keys", "vis_feats", "projector", "vis_cls") for plain VisionZip); () for
    method 'none' or an unknown method (``reduce_visual_tokens`` names the problem)."""
    if cfg.method == "none" or cfg.method not in known_reducers():
        return ()
    return get_reducer(cfg.method).needs(cfg)


def reduce_visual_tokens(
    feats: torch.Tensor,
    cfg: ReductionConfig,
    *,
    vis_feats: Optional[torch.Tensor] = None,
    cls_attn: Optional[torch.Tensor] = None,
    grid_hw: Optional[tuple[int, int]] = None,
    generator: Optional[torch.Generator] = None,
    vis_cls: Optional[torch.Tensor] = None,
    attn_keys: Optional[torch.Tensor] = None,
    projector: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> ReductionResult:
    """Reduce feats (B, N, D) to n = cfg.n_vis tokens per sample.

    vis_feats (B, N, Dv): pre-projector features of the same layer (VisPruner's similarity,
      VisionZip's merge before the projector).
    cls_attn (B, N): CLS->patch attention averaged over heads (VisPruner, HoloV, VisionZip).
    grid_hw: the patch grid (H, W) (uniform; default: square).
    generator: when given, one draw from it replaces cfg.seed (random / kmeans); the same seed
      is used for every sample, so no sample's result depends on the rest of its batch.
    vis_cls (B, Dv), attn_keys (B, N, dk), projector ((B, m, Dv) -> (B, m, D)): the CLS token's
      feature, the layer's attention keys (head mean) and the mm_projector (plain VisionZip).
    Stage A keeps n_keep = floor(n * split_ratio) (merge on) or n tokens; Stage B merges the
    pruned ones into n - n_keep anchors.  Output order: the base method's own output order when
    pruning alone with ``token_order: reference`` (``cfg.reference_order``), else by position.
    """
    if cfg.merge is None or cfg.position_mode is None:
        raise ValueError("reduce_visual_tokens needs a resolved ReductionConfig (call cfg.resolve())")
    if feats.dim() != 3:
        raise ValueError(f"feats must be (B, N, D), got shape {tuple(feats.shape)}")
    B, N, _ = feats.shape
    n = cfg.budget(N)
    if not 1 <= n <= N:
        raise BudgetError(f"n_vis={cfg.n_vis} must be in 1..N={N} (the image has N={N} visual tokens)")
    cfg.validate()
    if cfg.anchor_rule not in ANCHOR_RULES:
        raise ValueError(f"ReductionConfig.anchor_rule={cfg.anchor_rule!r} is not one of {sorted(ANCHOR_RULES)}")
    if cfg.method == "none":
        if n != N:
            raise ValueError(f"method 'none' keeps all N={N} tokens but n_vis={n}; choose one of {known_reducers()}")
        return identity_result(feats)
    if cfg.method not in known_reducers():
        if getattr(get_reducer(cfg.method) if cfg.method in known_methods() else None, "in_llm", False):
            raise ValueError(f"method {cfg.method!r} drops tokens inside the LLM (the model's forward runs it); "
                             f"reduce_visual_tokens runs the pre-LLM methods {known_reducers()}")
        raise ValueError(f"ReductionConfig.method={cfg.method!r} is unknown; known: {['none'] + known_methods()}")
    reducer = get_reducer(cfg.method)
    if n == N and not cfg.merge:
        return identity_result(feats)
    inp = ReductionInputs(
        feats=feats,
        cfg=cfg,
        seed=resolve_seed(cfg.seed, generator),
        vis_feats=vis_feats,
        cls_attn=cls_attn,
        grid_hw=grid_hw,
        vis_cls=vis_cls,
        attn_keys=attn_keys,
        projector=projector,
    )
    _check_inputs(inp, reducer.needs(cfg), cfg.method)
    part = reducer.partition(inp, n)  # member map (B, N) in [-1, n), group ids in the method's order
    by_position = not (cfg.reference_order and reducer.emits_order)
    return build_result(feats, part.source, n, cfg.position_rep, by_position=by_position,
                        features=part.features, extra=part.extra)
