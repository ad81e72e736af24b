"""Spec §2, Stage B: choose n_anchors anchors among the M pruned tokens and assign the rest.

Every rule only chooses the anchors (steps 1-4); the assignment (step 5: each non-anchor goes
to the anchor of highest cosine similarity, ties -> lowest anchor) and the merge (step 6: the
mean of anchor + members, done by ``positions.build_result``) are shared, so the rules are a
clean ablation of *which* tokens become anchors.

Rules (all on the projected features Y, rows normalised):
  reference   rho_i = sum_j S_ij;  delta_i = 1 - max{S_ij : rho_j < rho_i} (1 if no such j);
              anchors = top n by rho_i * delta_i.                      (RESTORE's reference code)
  dpc_higher  as reference but with rho_j > rho_i (textbook density peaks); a token with no
              denser token gets delta_i = max_j (1 - S_ij).
  bipartite   the roots of ToMe bipartite soft matching run on Y (in raster order of the tokens'
              original patch index) down to n groups.
  uniform     evenly spaced in raster order of the tokens' original patch index:
              rank floor((i + 1/2) * M / n), i = 0..n-1.
  random      the first n of a seeded permutation of the M ranks (the same for every sample).
  kmeans      spherical k-means (seeded random init, fixed iterations); each centroid, in
              order, takes its most similar token not already taken.
All top-n choices break ties towards the lowest index.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .bipartite import tome_partition
from .common import gather_rows, normalize, random_ranks, resolve_seed, topk_desc

ANCHOR_RULES: dict[str, Callable] = {}


def _rule(name: str):
    def deco(fn):
        ANCHOR_RULES[name] = fn
        return fn

    return deco


NO_NEIGHBOUR = -1e30  # far below any cosine: "no token qualifies" in the masked maximum
MAX_TOKENS = 1 << 20  # the masked maximum's float32 rank arithmetic is exact below this many tokens


def _masked_row_max(S: torch.Tensor, rho: torch.Tensor, lower: bool) -> torch.Tensor:
    """max{S_ij : rho_j < rho_i} (lower) or max{S_ij : rho_j > rho_i}, per row; below NO_NEIGHBOUR / 4
    when no j qualifies.  S (B, M, M), rho (B, M) -> (B, M), the exact maximum of the same entries.

    Float arithmetic only: no (B, M, M) bool mask (a broadcast comparison and a where over M^2 cost
    ~3x a float add on a CPU).  With lo_j = #{l : rho_l < rho_j} (ties share it), rho_j < rho_i iff
    lo_i - lo_j >= 1.  Let c = 1e30, P_ij = u_i - v_j with u_i = (lo_i - 1/2) c, v_j = lo_j c: the
    ranks are integers below MAX_TOKENS = 2^20, so u_i and v_j are each within c / 16 of exact and
    P_ij is >= 3c / 8 where j qualifies and <= -3c / 8 where it does not.  min(S_ij, P_ij) is then S_ij exactly
    or at most -3c / 8, and its row maximum is the qualifying maximum, or marks an empty row."""
    if rho.shape[-1] >= MAX_TOKENS:
        raise ValueError(f"anchor selection: M={rho.shape[-1]} tokens; the density-peaks rules take < {MAX_TOKENS}")
    asc = torch.sort(rho, dim=-1).values  # (B, M)
    lo = torch.searchsorted(asc, rho, right=not lower).float()  # (B, M) #{rho < rho_i} or #{rho <= rho_i}
    u, v = (lo - 0.5) * -NO_NEIGHBOUR, lo * -NO_NEIGHBOUR  # (B, M)
    if lower:
        P = u.unsqueeze(2) - v.unsqueeze(1)  # (B, M, M) [i, j] > 0 iff lo_i - lo_j >= 1
    else:  # rho_j > rho_i iff hi_j - hi_i >= 1 with hi = #{rho <= .}
        P = u.unsqueeze(1) - v.unsqueeze(2)
    return torch.minimum(P, S, out=P).amax(dim=-1)


def _density_peaks(S: torch.Tensor, k: int, lower: bool) -> torch.Tensor:
    """S (B, M, M) cosine -> (B, k) anchors by rho * delta."""
    rho = S.sum(dim=-1)  # (B, M)
    nearest = _masked_row_max(S, rho, lower)  # (B, M), below NO_NEIGHBOUR / 4 when none
    if lower:
        fallback = torch.ones_like(rho)  # lowest-density token: delta = 1
    else:
        fallback = 1.0 - S.amin(dim=-1)  # densest token: its largest distance
    delta = torch.where(nearest > NO_NEIGHBOUR / 4, 1.0 - nearest, fallback)
    return topk_desc(rho * delta, k)


@_rule("reference")
def _reference(yn, S, k, **_):
    return _density_peaks(S, k, lower=True)


@_rule("dpc_higher")
def _dpc_higher(yn, S, k, **_):
    return _density_peaks(S, k, lower=False)


@_rule("bipartite")
def _bipartite(yn, S, k, *, token_index, **_):
    raster = torch.sort(token_index, dim=1, stable=True).indices  # (B, M) ToMe alternates in raster order
    roots = tome_partition(yn.gather(1, raster.unsqueeze(-1).expand_as(yn)), k)[1]  # (B, k) raster ranks
    return raster.gather(1, roots)


@_rule("uniform")
def _uniform(yn, S, k, *, token_index, **_):
    B, M, _ = yn.shape
    raster = torch.sort(token_index, dim=1, stable=True).indices  # (B, M) ranks in raster order
    picks = ((torch.arange(k, device=yn.device, dtype=torch.float64) + 0.5) * M / k).floor().long()
    return raster[:, picks]


@_rule("random")
def _random(yn, S, k, *, seed, **_):
    B, M, _ = yn.shape
    return random_ranks(M, seed, yn.device)[:k].expand(B, k)


@_rule("kmeans")
def _kmeans(yn, S, k, *, seed, kmeans_iters, **_):
    B, M, D = yn.shape
    init = random_ranks(M, seed, yn.device)[:k]  # (k,)
    cent = yn[:, init]  # (B, k, D)
    for _ in range(kmeans_iters):
        assign = (yn @ cent.transpose(1, 2)).argmax(dim=-1)  # (B, M)
        onehot = torch.nn.functional.one_hot(assign, k).to(yn.dtype).transpose(1, 2)  # (B, k, M)
        sums = onehot @ yn  # (B, k, D)
        counts = onehot.sum(-1, keepdim=True)  # (B, k, 1)
        cent = torch.where(counts > 0, normalize(sums), cent)
    sim = yn @ cent.transpose(1, 2)  # (B, M, k)
    taken = torch.zeros(B, M, dtype=torch.bool, device=yn.device)
    anchors = torch.empty(B, k, dtype=torch.long, device=yn.device)
    for c in range(k):
        pick = sim[:, :, c].masked_fill(taken, float("-inf")).argmax(dim=-1)  # (B,)
        anchors[:, c] = pick
        taken.scatter_(1, pick.unsqueeze(1), True)
    return anchors


def anchor_merge(
    y: torch.Tensor,
    n_anchors: int,
    rule: str = "reference",
    *,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
    token_index: Optional[torch.Tensor] = None,
    kmeans_iters: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose anchors among the M tokens of y and assign every token to one.

    y (B, M, D) projected features of the pruned tokens (in the order Stage A hands them over).
    token_index (B, M): their original patch indices (rule 'uniform'; default: y's order).
    seed / generator: rules 'random' and 'kmeans' (one seed for every sample; a generator, when
    given, supplies that seed with one draw).
    Returns (anchors (B, n_anchors) long, ascending indices into M;
             assignment (B, M) long, index into anchors of every token, anchors -> themselves;
             all -1 when n_anchors == 0).
    """
    if rule not in ANCHOR_RULES:
        raise ValueError(f"unknown anchor_rule {rule!r}; known: {sorted(ANCHOR_RULES)}")
    if y.dim() != 3:
        raise ValueError(f"anchor_merge: y must be (B, M, D), got shape {tuple(y.shape)}")
    B, M, _ = y.shape
    if not 0 <= n_anchors <= M:
        raise ValueError(f"anchor_merge: n_anchors={n_anchors} must be in 0..M={M}")
    if kmeans_iters < 0:
        raise ValueError(f"anchor_merge: kmeans_iters={kmeans_iters} must be >= 0")
    dev = y.device
    if n_anchors == 0:
        return torch.empty(B, 0, dtype=torch.long, device=dev), torch.full((B, M), -1, dtype=torch.long, device=dev)
    if token_index is None:
        token_index = torch.arange(M, device=dev).expand(B, M)
    elif tuple(token_index.shape) != (B, M):
        raise ValueError(f"anchor_merge: token_index shape {tuple(token_index.shape)} != (B, M)={(B, M)}")
    yn = normalize(y.detach())  # (B, M, D) float32 (indices only: no graph)
    S = yn @ yn.transpose(1, 2) if rule in ("reference", "dpc_higher") else None  # (B, M, M)
    anchors = ANCHOR_RULES[rule](
        yn, S, n_anchors, seed=resolve_seed(seed, generator), token_index=token_index, kmeans_iters=kmeans_iters
    )
    anchors = torch.sort(anchors, dim=1).values  # (B, K) ascending
    if S is not None:
        sim = S.gather(2, anchors.unsqueeze(1).expand(B, M, n_anchors))  # (B, M, K)
    else:
        sim = yn @ gather_rows(yn, anchors).transpose(1, 2)
    assignment = sim.argmax(dim=-1)  # (B, M), first max -> lowest anchor
    assignment.scatter_(1, anchors, torch.arange(n_anchors, device=dev).expand(B, -1))
    return anchors, assignment
