"""The batched, sync-free selections (issue 20) choose exactly the tokens the previous code chose.

``prev_*`` below are the implementations of DivPrune, VisPruner and the density-peaks anchor rules
as they stood before the fast paths (last changed in 7d3431e), copied with only one added argument
(the tie rule, for the perturbed variants; anchor_merge trimmed to those two rules); the tests
compare the library against them on 60 seeds, several B / N / k, and inputs full of exact ties (duplicated
tokens, constant features, constant CLS attention, a few distinct feature values, zero vectors).
Each tie set is paired with a variant of the previous code that breaks ties towards the highest
index instead, which must disagree somewhere: the ties really are exercised.  The meta-device
runs show that no step reads a tensor's values on the host (no .item(), .tolist(), data-dependent
shapes): meta tensors have no values to read.
"""
from __future__ import annotations

import pytest
import torch

from helpers import one_thread  # noqa: F401
from llava_restore.reduction.anchors import ANCHOR_RULES, anchor_merge
from llava_restore.reduction.common import argsort_desc, cosine_matrix, floor_fraction, normalize, topk_desc
from llava_restore.reduction.divprune import divprune_select
from llava_restore.reduction.vispruner import vispruner_select

pytestmark = pytest.mark.usefixtures("one_thread")
SEEDS = range(60)


# ------------------------------------------------------------------ the previous implementations
def _argsort_desc_last(values):  # the perturbed tie rule: ties -> highest index first
    n = values.shape[-1]
    return n - 1 - torch.sort(values.flip(-1), dim=-1, descending=True, stable=True).indices


def _argmax_last(values, dim):
    return values.shape[dim] - 1 - values.flip(dim).argmax(dim=dim)


def prev_divprune_select(x: torch.Tensor, k: int, argmax=torch.argmax) -> torch.Tensor:
    B, N, _ = x.shape
    picks = torch.empty(B, k, dtype=torch.long, device=x.device)
    if k == 0:
        return picks
    dist = 1.0 - cosine_matrix(x)  # (B, N, N), computed once
    rows = torch.arange(B, device=x.device)
    if N == 1:
        picks[:, 0] = 0
        return picks
    nearest_other = dist.topk(2, dim=1, largest=False).values[:, 1, :]  # (B, N) per column
    first = argmax(nearest_other, dim=1)  # (B,) first max -> lowest index
    picks[:, 0] = first
    min_dist = dist[rows, first].clone()  # (B, N) distance to the picked set
    min_dist[rows, first] = float("-inf")
    for i in range(1, k):
        p = argmax(min_dist, dim=1)  # (B,)
        picks[:, i] = p
        min_dist = torch.minimum(min_dist, dist[rows, p])
        min_dist[rows, p] = float("-inf")
    return picks


def prev_vispruner_select(x, cls_attn, k, important_ratio=0.5, drop_per_step=8, argsort=argsort_desc):
    B, N, _ = x.shape
    n_imp = floor_fraction(k, important_ratio)
    n_div = k - n_imp
    order = argsort(cls_attn.float())  # (B, N)
    important, residual = order[:, :n_imp], order[:, n_imp:]  # (B, n_imp), (B, R)
    sim = cosine_matrix(x)  # (B, N, N), once
    while residual.shape[1] > n_div:
        R = residual.shape[1]
        a_idx, b_idx = residual[:, 0::2], residual[:, 1::2]  # (B, ceil(R/2)), (B, floor(R/2))
        r = min(drop_per_step, R - n_div, a_idx.shape[1])
        if r == a_idx.shape[1]:  # every A token goes; no need to score
            residual = b_idx
            continue
        rows = sim.gather(1, a_idx.unsqueeze(-1).expand(-1, -1, N))  # (B, |A|, N)
        scores = rows.gather(2, b_idx.unsqueeze(1).expand(-1, a_idx.shape[1], -1)).max(dim=-1).values
        survivors = argsort(scores)[:, r:]  # (B, |A| - r)
        residual = torch.cat([a_idx.gather(1, survivors), b_idx], dim=1)
    return torch.cat([important, residual], dim=1)


def prev_density_peaks(S, k, lower, topk=topk_desc):
    rho = S.sum(dim=-1)  # (B, M)
    if lower:
        allowed = rho.unsqueeze(1) < rho.unsqueeze(2)  # [b, i, j] = rho_j < rho_i
    else:
        allowed = rho.unsqueeze(1) > rho.unsqueeze(2)  # [b, i, j] = rho_j > rho_i
    nearest = S.masked_fill(~allowed, float("-inf")).max(dim=-1).values  # (B, M)
    if lower:
        fallback = torch.ones_like(rho)  # lowest-density token: delta = 1
    else:
        fallback = 1.0 - S.min(dim=-1).values  # densest token: its largest distance
    delta = torch.where(torch.isinf(nearest), fallback, 1.0 - nearest)
    return topk(rho * delta, k)


def prev_anchor_merge(y, n_anchors, rule="reference", topk=topk_desc):
    """anchor_merge as it stood, for the density-peaks rules (reference, dpc_higher)."""
    B, M, _ = y.shape
    dev = y.device
    if n_anchors == 0:
        return torch.empty(B, 0, dtype=torch.long, device=dev), torch.full((B, M), -1, dtype=torch.long, device=dev)
    yn = normalize(y)  # (B, M, D) float32
    S = yn @ yn.transpose(1, 2)
    anchors = prev_density_peaks(S, n_anchors, lower=rule == "reference", topk=topk)
    anchors = torch.sort(anchors, dim=1).values  # (B, K) ascending
    sim = S.gather(2, anchors.unsqueeze(1).expand(B, M, n_anchors))  # (B, M, K)
    assignment = sim.argmax(dim=-1)  # (B, M), first max -> lowest anchor
    assignment.scatter_(1, anchors, torch.arange(n_anchors, device=dev).expand(B, -1))
    return anchors, assignment


def _topk_desc_last(values, k):
    return _argsort_desc_last(values)[..., :k]


# ------------------------------------------------------------------ inputs
def random_feats(seed, B, N, D, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, D, generator=g).to(dtype)


def tie_feats(seed, B, N, D):
    """Inputs made of exact ties, one kind per seed (mod 5)."""
    g = torch.Generator().manual_seed(seed)
    kind = seed % 5
    if kind == 0:  # duplicated tokens: every token is one of N // 4 distinct ones
        base = torch.randn(B, max(1, N // 4), D, generator=g)
        return base.gather(1, torch.randint(0, base.shape[1], (B, N, 1), generator=g).expand(B, N, D))
    if kind == 1:  # all tokens identical
        return torch.randn(B, 1, D, generator=g).expand(B, N, D).clone()
    if kind == 2:  # a few distinct values per coordinate: many equal cosines
        return torch.randint(-1, 2, (B, N, D), generator=g).float()
    if kind == 3:  # some all-zero tokens (cosine 0 to everything) among duplicates
        x = torch.randn(B, max(1, N // 3), D, generator=g)
        x = x.gather(1, torch.randint(0, x.shape[1], (B, N, 1), generator=g).expand(B, N, D)).clone()
        x[:, ::3] = 0.0
        return x
    return torch.randint(0, 2, (B, N, D), generator=g).float()  # binary features


def tie_scores(seed, B, N):
    g = torch.Generator().manual_seed(seed)
    if seed % 2:
        return torch.full((B, N), 1.0 / N)  # constant CLS attention
    return torch.randint(0, 3, (B, N), generator=g).float() / 3  # three distinct values


SHAPES = [(1, 16, 8), (3, 37, 8), (2, 64, 16), (1, 144, 12)]


def _ks(N):
    return sorted({0, 1, 2, 5, N // 3, N // 2, N - 1, N})


# ------------------------------------------------------------------ DivPrune
@pytest.mark.parametrize("B,N,D", SHAPES)
def test_divprune_matches_previous_on_random_inputs(B, N, D):
    for seed in SEEDS:
        x = random_feats(seed, B, N, D)
        for k in _ks(N):
            assert torch.equal(divprune_select(x, k), prev_divprune_select(x, k)), (seed, k)


@pytest.mark.parametrize("B,N,D", SHAPES)
def test_divprune_matches_previous_on_ties(B, N, D):
    differs = False
    for seed in SEEDS:
        x = tie_feats(seed, B, N, D)
        for k in _ks(N):
            want = prev_divprune_select(x, k)
            assert torch.equal(divprune_select(x, k), want), (seed, k)
            differs |= not torch.equal(want, prev_divprune_select(x, k, argmax=_argmax_last))
    assert differs, "the tie inputs never exercised the tie rule"


def test_divprune_low_precision_inputs_and_one_token():
    for seed in range(10):
        for dtype in (torch.bfloat16, torch.float16):
            x = random_feats(seed, 2, 50, 8, dtype)
            assert torch.equal(divprune_select(x, 20), prev_divprune_select(x, 20))
    x = random_feats(0, 3, 1, 4)
    assert torch.equal(divprune_select(x, 1), prev_divprune_select(x, 1))
    assert divprune_select(x, 0).shape == (3, 0)


def test_divprune_batch_rows_are_independent():
    x = random_feats(7, 4, 64, 8)
    batched = divprune_select(x, 20)
    for b in range(4):
        assert torch.equal(batched[b:b + 1], divprune_select(x[b:b + 1], 20))


# ------------------------------------------------------------------ VisPruner
VIS_OPTS = [(0.5, 8), (0.0, 8), (1.0, 8), (0.3, 3), (0.5, 1)]


@pytest.mark.parametrize("B,N,D", SHAPES)
def test_vispruner_matches_previous_on_random_inputs(B, N, D):
    for seed in SEEDS:
        x = random_feats(seed, B, N, D)
        cls = torch.rand(B, N, generator=torch.Generator().manual_seed(seed + 1000))
        ratio, step = VIS_OPTS[seed % len(VIS_OPTS)]
        for k in _ks(N):
            got = vispruner_select(x, cls, k, ratio, step)
            assert torch.equal(got, prev_vispruner_select(x, cls, k, ratio, step)), (seed, k, ratio, step)


@pytest.mark.parametrize("B,N,D", SHAPES)
def test_vispruner_matches_previous_on_ties(B, N, D):
    differs = False
    for seed in SEEDS:
        x, cls = tie_feats(seed, B, N, D), tie_scores(seed, B, N)
        ratio, step = VIS_OPTS[seed % len(VIS_OPTS)]
        for k in _ks(N):
            want = prev_vispruner_select(x, cls, k, ratio, step)
            assert torch.equal(vispruner_select(x, cls, k, ratio, step), want), (seed, k, ratio, step)
            differs |= not torch.equal(want, prev_vispruner_select(x, cls, k, ratio, step, argsort=_argsort_desc_last))
    assert differs, "the tie inputs never exercised the tie rule"


def test_vispruner_at_llava_shape_and_batch_rows_independent():
    """N = 576 (a 24 x 24 grid), the budgets of the paper, B = 3 vs each row alone."""
    x = random_feats(3, 3, 576, 16)
    cls = torch.rand(3, 576, generator=torch.Generator().manual_seed(4))
    for k in (32, 64, 192):
        got = vispruner_select(x, cls, k)
        assert torch.equal(got, prev_vispruner_select(x, cls, k))
        for b in range(3):
            assert torch.equal(got[b:b + 1], vispruner_select(x[b:b + 1], cls[b:b + 1], k))


# ------------------------------------------------------------------ Stage-B anchors
@pytest.mark.parametrize("rule", ["reference", "dpc_higher"])
@pytest.mark.parametrize("B,N,D", SHAPES)
def test_density_peak_anchors_match_previous(rule, B, N, D):
    differs = False
    for seed in SEEDS:
        for y in (random_feats(seed, B, N, D), tie_feats(seed, B, N, D)):
            for n in _ks(N):
                want = prev_anchor_merge(y, n, rule)
                got = anchor_merge(y, n, rule)
                assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (seed, n)
                differs |= not torch.equal(want[0], prev_anchor_merge(y, n, rule, topk=_topk_desc_last)[0])
    assert differs, "the tie inputs never exercised the tie rule"


def test_anchor_merge_at_llava_shape():
    y = random_feats(5, 2, 544, 32)
    for rule in ("reference", "dpc_higher"):
        got, want = anchor_merge(y, 32, rule), prev_anchor_merge(y, 32, rule)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------ no host reads
def test_selections_never_read_values_on_the_host():
    """On the meta device a tensor has shape but no values: any .item(), .tolist(), bool(tensor) or
    data-dependent shape inside the selections would raise."""
    B, N = 2, 576
    x = torch.empty(B, N, 16, device="meta")
    cls = torch.empty(B, N, device="meta")
    assert divprune_select(x, 64).shape == (B, 64)
    assert vispruner_select(x, cls, 64).shape == (B, 64)
    token_index = torch.empty(B, 544, dtype=torch.long, device="meta")
    for rule in ANCHOR_RULES:  # every Stage-B rule
        anchors, assignment = anchor_merge(x[:, :544], 32, rule, token_index=token_index)
        assert anchors.shape == (B, 32) and assignment.shape == (B, 544), rule
    with pytest.raises((RuntimeError, NotImplementedError)):  # the probe can fail: a host read does
        bool(x.sum() > 0)


# ------------------------------------------------------------------ the exact fast paths themselves
def _masked_max_by_definition(S, rho, lower):
    """max{S_ij : rho_j < rho_i} (or >), -inf when none: the definition, with a bool mask."""
    allowed = rho.unsqueeze(1) < rho.unsqueeze(2) if lower else rho.unsqueeze(1) > rho.unsqueeze(2)
    return torch.where(allowed, S, float("-inf")).amax(dim=-1)


@pytest.mark.parametrize("lower", [True, False])
def test_masked_row_max_is_the_exact_qualifying_maximum(lower):
    """The float-rank penalty keeps exactly the qualifying entries: equal to the definition (bit for bit)
    on random and heavily tied densities, empty rows included; a perturbed rule (<= instead of <) differs."""
    from llava_restore.reduction.anchors import NO_NEIGHBOUR, _masked_row_max

    gen = torch.Generator().manual_seed(0)
    differs = False
    for trial in range(40):
        B, M = 2, 1 + trial * 7
        S = torch.rand(B, M, M, generator=gen) * 2 - 1  # any values in [-1, 1]
        rho = torch.randint(0, 1 + trial % 5, (B, M), generator=gen).float() if trial % 2 else torch.randn(B, M, generator=gen)
        want = _masked_max_by_definition(S, rho, lower)
        got = _masked_row_max(S, rho, lower)
        empty = torch.isinf(want)
        assert torch.equal(got[~empty], want[~empty]), trial
        assert bool((got[empty] < NO_NEIGHBOUR / 4).all()), trial
        loose = rho.unsqueeze(1) <= rho.unsqueeze(2) if lower else rho.unsqueeze(1) >= rho.unsqueeze(2)
        perturbed = torch.where(loose, S, float("-inf")).amax(dim=-1)
        differs |= not torch.equal(perturbed, want)
    assert differs, "no tie in rho ever mattered"


def test_vispruner_scorer_paths_agree_with_the_block_maximum():
    """Both exact ways of scoring A against B (whole rows + column mask; flat gather) give the maximum
    over exactly the B columns, at every |B| either side of the switch."""
    from llava_restore.reduction import vispruner as vp

    gen = torch.Generator().manual_seed(1)
    B, N = 3, 96
    sim = cosine_matrix(torch.randn(B, N, 8, generator=gen))
    scorer = vp._BScorer(sim)
    for R in (N - 1, N // 2 + 3, N // 2, N // 4 + 1, 9, 2):
        residual = torch.stack([torch.randperm(N, generator=gen)[:R] for _ in range(B)])
        a_idx, b_idx = residual[:, 0::2], residual[:, 1::2]
        want = torch.stack([sim[b][a_idx[b]][:, b_idx[b]].amax(dim=-1) for b in range(B)])
        assert torch.equal(scorer(a_idx, b_idx), want), R


def test_gather_rows_batched_noncontiguous_and_differentiable():
    from llava_restore.reduction.common import gather_rows

    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 10, generator=gen).transpose(1, 2).requires_grad_(True)  # (3, 10, 6), non-contiguous
    idx = torch.stack([torch.randperm(10, generator=gen)[:4] for _ in range(3)])
    got = gather_rows(x, idx)
    want = torch.stack([x[b, idx[b]] for b in range(3)])
    assert torch.equal(got, want)
    got.sum().backward()
    counts = torch.zeros(3, 10)
    counts.scatter_add_(1, idx, torch.ones(3, 4))
    assert torch.equal(x.grad, counts.unsqueeze(-1).expand(3, 10, 6))


def _scatter_sums(x, group, n_groups):
    """The group sums as build_result, group_sums and SparseVLM's cluster means computed them before
    ``row_sums``: one scatter_add_ along N with an expanded (B, N, D) index."""
    B, N, D = x.shape
    sums = torch.zeros(B, n_groups, D, dtype=torch.float32)
    sums.scatter_add_(1, group.unsqueeze(-1).expand(B, N, D), x.float())
    return sums


def test_row_sums_equals_the_scatter_add_bit_for_bit():
    """Same sums, same bits (features spanning 6 decades, so the order of the additions shows), batched,
    from bf16 and from a non-contiguous input, with gradients; summing in reverse order must differ."""
    from llava_restore.reduction.common import row_sums

    differs = False
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        B, N, D, n = 1 + seed % 3, (16, 576, 300)[seed % 3], (8, 128, 33)[seed % 3], (1, 5, 65)[seed % 3]
        x = torch.randn(B, N, D, generator=gen) * torch.logspace(-3, 3, N).view(1, N, 1)
        group = torch.randint(0, n, (B, N), generator=gen)
        assert torch.equal(row_sums(x, group, n), _scatter_sums(x, group, n)), seed
        rev = _scatter_sums(x.flip(1), group.flip(1), n)  # the same additions, last token first
        differs |= not torch.equal(rev, _scatter_sums(x, group, n))
    assert differs, "the inputs never made the order of the additions visible"
    xb = torch.randn(2, 40, 6, generator=gen).to(torch.bfloat16)
    g = torch.randint(0, 7, (2, 40), generator=gen)
    assert torch.equal(row_sums(xb, g, 7), _scatter_sums(xb, g, 7))
    xt = torch.randn(2, 6, 40, generator=gen).transpose(1, 2).requires_grad_(True)  # (2, 40, 6) non-contiguous
    got = row_sums(xt, g, 7)
    assert torch.equal(got, _scatter_sums(xt.detach(), g, 7))
    w = torch.randn(2, 7, 6, generator=gen)
    (got * w).sum().backward()
    assert torch.equal(xt.grad, w.gather(1, g.unsqueeze(-1).expand(2, 40, 6)))
