"""SparseVLM (Zhang et al., ICML 2025; official code Gumpest/SparseVLMs): pure batch-first tensor
functions, and the ``SparseVLM`` in-LLM policy (end of file) that applies them through
``inllm.py``'s plumbing (which layer, the attention rows, re-padding, the per-layer KV cache).
Per sample:

1. **Text raters** (once, from the LLM's input embeddings): for the visual embeddings V (n_v, D)
   and the text after the image T (n_t, D), ``r = mean_v softmax_t(V T^T)`` (n_t,); the raters are
   the text tokens with ``r_t > mean(r)``.
2. **Scores** at a pruning layer l: the layer's attention probabilities (softmax over all allowed
   keys), averaged over heads, rows = the raters, columns = the visual tokens, averaged over the
   raters -> s (n_v,).
3. **How many to keep**: the reference v1.5 schedule (a fixed count per pruning layer for each
   budget, ``SPARSEVLM_SCHEDULES``) or SparseVLM v1's rank rule ``k = int(rank(P) * scale + bias)``
   where P (n_raters, n_v) is the head-averaged rater-to-visual attention; both clamp to n_v - 1.
4. **Recycling**: of the deleted tokens (the layer's output hidden states), the top
   ``int(0.3 * n_del) + 1`` by score are clustered into ``int(m / 10) + 1`` tokens with DPC-kNN
   (Euclidean distances / sqrt(C), density from the c nearest, centres = top c of density x delta)
   and each cluster is replaced by its mean; the merged tokens follow the kept visual tokens.

See docs/restore.md ("SparseVLM") for the configuration of the 192/128/64 rows and the deviations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .common import gather_rows, row_sums, topk_desc
from .config import SPARSEVLM_CLAMPS
from .inllm import Decision, DropEvent, InLLMPolicy, Schedule, topk_mask
from .registry import register_reducer

# Official v1.5 code (llava/model/language_model/score.py): layers 2, 6 and 15 of LLaVA-1.5-7B's 32;
# the number of visual tokens each pruning layer keeps (before the recycled ones are added).
SPARSEVLM_LAYERS = (2, 6, 15)
SPARSEVLM_SCHEDULES: dict[int, tuple[int, ...]] = {
    192: (300, 200, 110),
    128: (303, 110, 36),
    96: (238, 48, 26),
    64: (66, 30, 17),
}
# SparseVLM v1 (commit b72c5d6, README): the rank rule's (scale, bias) per budget, layers 2, 6, 15, 19.
SPARSEVLM_V1_LAYERS = (2, 6, 15, 19)
SPARSEVLM_V1_RANK: dict[int, tuple[float, float]] = {192: (13.5, 0.0), 128: (9.0, 6.0), 64: (0.8, 0.0)}
RECYCLE_EPS = 1e-6  # the reference divides each cluster's sum by (count + 1e-6)


def sparsevlm_raters(vis: torch.Tensor, text: torch.Tensor, text_valid: Optional[torch.Tensor] = None,
                     vis_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Text raters: vis (B, n_v, D), text (B, n_t, D), text_valid (B, n_t) / vis_valid (B, n_v) bool
    (padding) -> (B, n_t) bool.

    ``r_t = mean_v softmax_t(v . t)`` over the valid text tokens; raters are ``r_t > mean_t r_t``."""
    B, n_t, _ = text.shape
    valid = torch.ones(B, n_t, dtype=torch.bool, device=text.device) if text_valid is None else text_valid.bool()
    vok = torch.ones(vis.shape[:2], dtype=torch.bool, device=vis.device) if vis_valid is None else vis_valid.bool()
    if bool((valid.sum(1) == 0).any()):
        raise ValueError("sparsevlm_raters: a sample has no text tokens after its image")
    logits = vis.float() @ text.float().transpose(1, 2)  # (B, n_v, n_t)
    logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    p = logits.softmax(dim=2) * vok[:, :, None]
    r = p.sum(1) / vok.sum(1, keepdim=True).clamp(min=1)  # (B, n_t): mean over the visual tokens
    mean = (r * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True)  # (B, 1)
    return (r > mean) & valid


def rater_relation(probs: torch.Tensor, raters: torch.Tensor, vis_cols: torch.Tensor) -> torch.Tensor:
    """The head-averaged rater-to-visual attention P.

    probs (B, H, n_q, L) attention probabilities of n_q text queries; raters (B, n_q) bool;
    vis_cols (B, n_v) long key columns of the visual tokens -> (B, n_q, n_v) with non-rater rows 0."""
    p = probs.float().mean(dim=1)  # (B, n_q, L)
    p = p.gather(2, vis_cols[:, None, :].expand(-1, p.shape[1], -1))  # (B, n_q, n_v)
    return p * raters[:, :, None]


def sparsevlm_scores(relation: torch.Tensor, raters: torch.Tensor) -> torch.Tensor:
    """relation (B, n_q, n_v) from ``rater_relation`` -> (B, n_v): the mean over the raters."""
    n_r = raters.sum(1, keepdim=True).clamp(min=1)  # (B, 1)
    return relation.sum(1) / n_r


def rank_keep_count(relation: torch.Tensor, raters: torch.Tensor, scale: float, bias: float) -> list[Optional[int]]:
    """SparseVLM v1's rank rule, per sample: ``rank = rank(P_b)`` of its (n_raters, n_v) relation;
    None (keep all, no pruning here) when rank == n_v, else ``min(int(rank * scale + bias), n_v - 1)``."""
    out: list[Optional[int]] = []
    n_v = relation.shape[2]
    for b in range(relation.shape[0]):
        p = relation[b][raters[b]]  # (n_raters, n_v)
        rank = int(torch.linalg.matrix_rank(p.float())) if p.numel() else 0
        out.append(None if n_v - rank == 0 else min(int(rank * scale + bias), n_v - 1))
    return out


def fixed_keep_count(n_v: int, budget: int, clamp: str = "all") -> Optional[int]:
    """The v1.5 rule ``min(budget, n_v - 1)``; None (keep all) when the budget covers every token
    (``clamp='all'``, ours) -- the reference always deletes one (``clamp='reference'``)."""
    if clamp not in SPARSEVLM_CLAMPS:
        raise ValueError(f"sparsevlm clamp={clamp!r} is not one of ['all', 'reference']")
    if budget >= n_v and clamp == "all":
        return None
    return max(min(budget, n_v - 1), 0)


def dpc_knn_clusters(x: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference DPC-kNN clustering: x (B, m, C) -> (centres (B, c) long, assignment (B, m) long
    in [0, c)).  Distances ||x_i - x_j|| / sqrt(C); density exp(-mean of the squared distances to
    the c nearest (itself included)); delta = distance to the nearest denser token (the largest
    distance of the sample when none is denser); centres = top c of density x delta, in that order;
    every token joins its nearest centre (ties -> the earlier centre), centres join themselves."""
    B, m, C = x.shape
    if not 1 <= n_clusters <= m:
        raise ValueError(f"dpc_knn_clusters: n_clusters={n_clusters} must be in [1, {m}]")
    xf = x.float()
    dist = torch.cdist(xf, xf) / math.sqrt(C)  # (B, m, m)
    near = torch.topk(dist, k=n_clusters, dim=-1, largest=False).values  # (B, m, c)
    density = torch.exp(-(near ** 2).mean(-1))  # (B, m)
    denser = density[:, None, :] > density[:, :, None]  # [b, i, j] = rho_j > rho_i
    dmax = dist.flatten(1).max(-1).values[:, None, None]  # (B, 1, 1)
    delta = torch.where(denser, dist, dmax).min(-1).values  # (B, m)
    centres = topk_desc(delta * density, n_clusters)  # (B, c)
    to_centre = dist.gather(1, centres[:, :, None].expand(-1, -1, m))  # (B, c, m)
    assign = to_centre.argmin(dim=1)  # (B, m), first minimum -> earliest centre
    assign.scatter_(1, centres, torch.arange(n_clusters, device=x.device).expand(B, -1))
    return centres, assign


def cluster_means(x: torch.Tensor, assign: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """x (B, m, C), assign (B, m) -> (B, c, C): sum / (count + 1e-6) per cluster, in x's dtype."""
    B, m, C = x.shape
    sums = row_sums(x, assign, n_clusters)  # (B, c, C) float32
    counts = torch.zeros(B, n_clusters, dtype=torch.float32, device=x.device)
    counts.scatter_add_(1, assign, torch.ones(B, m, device=x.device))
    return (sums / (counts[:, :, None] + RECYCLE_EPS)).to(x.dtype)


def recycle_counts(n_deleted: int, ratio: float, cluster_div: int) -> tuple[int, int]:
    """(m, c): the reference recycles m = int(n_deleted * ratio) + 1 of the deleted tokens into
    c = int(m / cluster_div) + 1 merged ones (nothing when nothing is deleted)."""
    if n_deleted <= 0:
        return 0, 0
    m = min(int(n_deleted * ratio) + 1, n_deleted)
    return m, int(m / cluster_div) + 1 if m >= 1 else 0


@dataclass
class Recycled:
    tokens: torch.Tensor  # (B, c, C) merged tokens, in centre order
    chosen: torch.Tensor  # (B, m) long: indices into the deleted set that were recycled, score order
    assign: torch.Tensor  # (B, m) long: cluster of each chosen token


def sparsevlm_recycle(x_del: torch.Tensor, score_del: torch.Tensor, ratio: float = 0.3,
                      cluster_div: int = 10) -> Optional[Recycled]:
    """Token recycling: x_del (B, M, C) deleted tokens (ascending original order), score_del (B, M)
    their scores -> the merged tokens, or None when nothing is deleted."""
    B, M, _ = x_del.shape
    m, c = recycle_counts(M, ratio, cluster_div)
    if m == 0:
        return None
    chosen = topk_desc(score_del.float(), m)  # (B, m), highest score first
    picked = gather_rows(x_del, chosen)  # (B, m, C)
    c = min(c, m)
    _, assign = dpc_knn_clusters(picked, c)
    return Recycled(cluster_means(picked, assign, c), chosen, assign)


def keep_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores (B, n_v) -> (B, n_v) bool: the top k (ties -> lowest index), kept in original order."""
    B, n_v = scores.shape
    mask = torch.zeros(B, n_v, dtype=torch.bool, device=scores.device)
    if k > 0:
        mask.scatter_(1, topk_desc(scores.float(), k), True)
    return mask


REFERENCE_DEPTH = 32  # LLaVA-1.5-7B's decoder layers, which SPARSEVLM_LAYERS index


def sparsevlm_layers(n_layers: int, layers: Optional[list[int]] = None,
                     reference: tuple[int, ...] = SPARSEVLM_LAYERS) -> tuple[int, ...]:
    """The pruning layers (tokens are dropped after each, from its attention): ``layers`` as given,
    or ``reference`` (layers of a 32-layer decoder) scaled to ``n_layers`` (round(l * n_layers / 32));
    they must be strictly increasing and leave a layer after the last."""
    if layers is None:
        out = tuple(int(math.floor(l * n_layers / REFERENCE_DEPTH + 0.5)) for l in reference)
        how = f"the reference layers {list(reference)} of {REFERENCE_DEPTH} scaled to {n_layers}"
    else:
        out, how = tuple(int(l) for l in layers), f"sparsevlm_layers={list(layers)}"
    if not out or any(b <= a for a, b in zip(out, out[1:])) or out[0] < 0 or out[-1] > n_layers - 2:
        raise ValueError(f"sparsevlm: {how} gives layers {list(out)}; they must be strictly increasing in "
                         f"[0, {n_layers - 2}] (a {n_layers}-layer decoder; tokens drop after each): "
                         f"set sparsevlm_layers=[...]")
    return out


def sparsevlm_schedule(n_vis: Optional[int], n_stages: int, schedule: Optional[list[int]] = None) -> tuple[int, ...]:
    """Visual tokens kept at each pruning layer (before recycling): ``schedule`` as given, or the
    official v1.5 list for ``n_vis``."""
    if schedule is None:
        if n_vis not in SPARSEVLM_SCHEDULES:
            raise ValueError(f"sparsevlm has reference schedules for n_vis in {sorted(SPARSEVLM_SCHEDULES)}, not "
                             f"{n_vis}: set sparsevlm_schedule=[k1,k2,...] (tokens kept at each pruning layer)")
        schedule = list(SPARSEVLM_SCHEDULES[n_vis])
    out = tuple(int(k) for k in schedule)
    if len(out) != n_stages or any(k < 1 for k in out):
        raise ValueError(f"sparsevlm_schedule={list(out)} must list one count >= 1 per pruning layer ({n_stages})")
    return out


def sparsevlm_plan(n_tokens: int, n_layers: int, layers: tuple[int, ...], schedule: tuple[int, ...],
                   recycle: bool = True, ratio: float = 0.3, cluster_div: int = 10,
                   clamp: str = "all") -> list[int]:
    """Visual tokens that *leave* each layer under the fixed schedule (what the official code's
    "Equal Tokens" averages): (n_layers,) counts; layer l's input count is the previous entry."""
    counts, v = [], n_tokens
    for i in range(n_layers):
        if i in layers:
            k = fixed_keep_count(v, schedule[layers.index(i)], clamp)
            if k is not None:
                _, c = recycle_counts(v - k, ratio, cluster_div) if recycle else (0, 0)
                v = k + c
        counts.append(v)
    return counts


# ----------------------------------------------------------------------------- the in-LLM policy
def _rows_of(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mask (B, L) bool -> (idx (B, n) long, ok (B, n) bool): each row's True positions, ascending,
    padded (with index 0, ok False) to the largest count."""
    B, L = mask.shape
    n = int(mask.sum(1).max()) if mask.numel() else 0
    pos = torch.arange(L, device=mask.device).expand(B, L)
    order = torch.where(mask, pos, pos + L).argsort(dim=1, stable=True)[:, :n]  # True positions first
    ok = torch.arange(n, device=mask.device)[None] < mask.sum(1, keepdim=True)
    return torch.where(ok, order, torch.zeros_like(order)), ok


def input_raters(h0: torch.Tensor, valid0: torch.Tensor, visual0: torch.Tensor) -> torch.Tensor:
    """The raters over the decoder's input layout: h0 (B, L0, D) input embeddings -> (B, L0) bool.
    Every row's visual tokens rate against the real text after its last visual token."""
    L0 = valid0.shape[1]
    idx = torch.arange(L0, device=valid0.device).expand_as(valid0)
    vis = visual0 & valid0
    last_vis = torch.where(vis, idx, -1).max(1).values  # (B,)
    text = valid0 & ~visual0 & (idx > last_vis[:, None])  # (B, L0)
    has = vis.any(1) & text.any(1)
    out = torch.zeros_like(valid0)
    if not bool(has.any()):
        return out
    rows = has.nonzero(as_tuple=True)[0]
    vi, vok = _rows_of(vis[rows])
    ti, tok = _rows_of(text[rows])
    r = sparsevlm_raters(gather_rows(h0[rows], vi), gather_rows(h0[rows], ti), tok, vok)  # (b, n_t)
    sub = torch.zeros(len(rows), L0 + 1, dtype=torch.bool, device=valid0.device)  # column L0: padding
    sub.scatter_(1, torch.where(tok, ti, L0), r & tok)
    out[rows] = sub[:, :L0]
    return out


@register_reducer("sparsevlm")
class SparseVLM(InLLMPolicy):
    """SparseVLM (see the module doc): text raters chosen once from the input embeddings; after each
    pruning layer the visual tokens its raters attend to least are deleted (v1.5's fixed counts, or
    v1's rank rule) and the best-rated deleted ones are recycled into a few merged tokens placed
    after the kept visual tokens; positions reindexed after every drop (the official code)."""

    reference_positions = "reindex"

    def schedule(self, cfg, n_layers, n_visual):
        N, n = n_visual, cfg.n_vis
        # inllm_budget does not apply: n_vis names the official schedule's row (its RETAIN_TOKN), whose
        # tokens leaving each layer average n_vis on LLaVA-1.5's 32 layers (docs/restore.md)
        if n is not None and not 1 <= n <= N:
            raise ValueError(f"ReductionConfig.n_vis={n} must be in 1..N={N}")
        ref = SPARSEVLM_LAYERS if cfg.sparsevlm_count == "fixed" else SPARSEVLM_V1_LAYERS
        layers = sparsevlm_layers(n_layers, None if cfg.sparsevlm_layers is None else list(cfg.sparsevlm_layers), ref)
        if cfg.sparsevlm_count == "rank":
            rank_scale_bias(cfg)  # fails early on a budget without v1 values
            events = [DropEvent(l, l + 1, None, s + 1) for s, l in enumerate(layers)]
            return Schedule(events, [N] * n_layers, N)  # data-dependent: the report has the real counts
        if n is None and cfg.sparsevlm_schedule is None:
            raise ValueError("sparsevlm needs n_vis (one of the official rows "
                             f"{sorted(SPARSEVLM_SCHEDULES)}) or sparsevlm_schedule")
        keeps = sparsevlm_schedule(n, len(layers), cfg.sparsevlm_schedule)
        if max(keeps) > N:
            raise ValueError(f"sparsevlm_schedule={list(keeps)} keeps more than the N={N} visual tokens per image")
        leaving = sparsevlm_plan(N, n_layers, layers, keeps, cfg.sparsevlm_recycle, cfg.sparsevlm_recycle_ratio,
                                 cfg.sparsevlm_cluster_div, cfg.sparsevlm_clamp)
        events = [DropEvent(l, l + 1, k, s + 1) for s, (l, k) in enumerate(zip(layers, keeps))]
        return Schedule(events, [N] + leaving[:-1], N)  # tokens entering each layer

    def decide(self, event, view, cfg):
        vis = view.visual & view.valid  # (B, L)
        raters0 = input_raters(view.h0, view.valid0, view.visual0)  # (B, L0)
        raters = view.valid & (view.orig >= 0) & raters0.gather(1, view.orig.clamp(min=0))  # (B, L)
        rows, rok = _rows_of(raters)  # (B, n_q)
        rows = torch.where(rok, rows, view.last[:, None])  # padding rows: a real query (weight 0), no NaN
        keep_all = (view.valid & ~view.visual) | vis
        if rows.shape[1] == 0:
            return Decision(keep=keep_all)
        rel = view.probs(rows).float().mean(1) * rok[:, :, None]  # (B, n_q, L) head mean, rater rows only
        score = rel.sum(1) / rok.sum(1, keepdim=True).clamp(min=1)  # (B, L)
        B, L = vis.shape
        k = torch.zeros(B, dtype=torch.long, device=vis.device)
        for b in range(B):
            n_v = int(vis[b].sum())
            kb = None
            if n_v > 0 and bool(rok[b].any()):
                if event.keep is not None:
                    kb = fixed_keep_count(n_v, event.keep * int(view.n_images[b]), cfg.sparsevlm_clamp)
                else:
                    scale, bias = rank_scale_bias(cfg)
                    p = rel[b:b + 1][:, :, vis[b]]  # (1, n_q, n_v)
                    kb = rank_keep_count(p, rok[b:b + 1], scale, bias)[0]
            k[b] = n_v if kb is None else kb
        keep_vis = topk_mask(score, vis, k)  # (B, L)
        decision = Decision(keep=(view.valid & ~view.visual) | keep_vis)
        if cfg.sparsevlm_recycle:
            self._recycle(decision, view, vis & ~keep_vis, score, cfg)
        return decision

    @staticmethod
    def _recycle(decision: Decision, view, deleted: torch.Tensor, score: torch.Tensor, cfg) -> None:
        """Merge each row's best-rated deleted tokens (view.h: the pruning layer's outputs)."""
        B, _, D = view.h.shape
        merged, pos = [], []
        for b in range(B):
            idx = deleted[b].nonzero(as_tuple=True)[0]  # ascending
            rec = sparsevlm_recycle(view.h[b:b + 1, idx], score[b:b + 1, idx], cfg.sparsevlm_recycle_ratio,
                                    cfg.sparsevlm_cluster_div) if idx.numel() else None
            if rec is None:
                merged.append(view.h.new_zeros(0, D))
                pos.append(view.positions.new_zeros(0))
                continue
            members = idx[rec.chosen[0]]  # (m,) layout indices of the recycled tokens
            c = rec.tokens.shape[1]
            p = torch.zeros(c, device=view.h.device).scatter_add_(0, rec.assign[0], view.positions[b, members].float())
            cnt = torch.zeros(c, device=view.h.device).scatter_add_(0, rec.assign[0], torch.ones_like(p[rec.assign[0]]))
            merged.append(rec.tokens[0])
            pos.append(p / cnt)  # retain mode only: the mean position of the members
        m = max(t.shape[0] for t in merged)
        if m == 0:
            return
        decision.extra_h = view.h.new_zeros(B, m, D)
        decision.extra_pos = torch.zeros(B, m, device=view.h.device)
        decision.extra_valid = torch.zeros(B, m, dtype=torch.bool, device=view.h.device)
        for b, (t, p) in enumerate(zip(merged, pos)):
            decision.extra_h[b, : t.shape[0]] = t
            decision.extra_pos[b, : t.shape[0]] = p
            decision.extra_valid[b, : t.shape[0]] = True


def rank_scale_bias(cfg) -> tuple[float, float]:
    """(scale, bias) of the rank rule: the options, or SparseVLM v1's values for n_vis."""
    if cfg.sparsevlm_rank_scale is not None and cfg.sparsevlm_rank_bias is not None:
        return float(cfg.sparsevlm_rank_scale), float(cfg.sparsevlm_rank_bias)
    if cfg.n_vis not in SPARSEVLM_V1_RANK:
        raise ValueError(f"sparsevlm_count=rank has SparseVLM v1's (scale, bias) for n_vis in "
                         f"{sorted(SPARSEVLM_V1_RANK)}, not {cfg.n_vis}: set sparsevlm_rank_scale and sparsevlm_rank_bias")
    scale, bias = SPARSEVLM_V1_RANK[cfg.n_vis]
    return (float(cfg.sparsevlm_rank_scale) if cfg.sparsevlm_rank_scale is not None else scale,
            float(cfg.sparsevlm_rank_bias) if cfg.sparsevlm_rank_bias is not None else bias)
