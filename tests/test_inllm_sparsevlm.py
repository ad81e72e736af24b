"""SparseVLM: the pure tensor functions against hand-computed values from the method's definition
(text raters, scores, the keep counts, DPC-kNN recycling), then the decoder integration."""
from __future__ import annotations

import math

import pytest
import torch

from llava_restore.reduction.sparsevlm import (
    SPARSEVLM_SCHEDULES,
    dpc_knn_clusters,
    fixed_keep_count,
    keep_mask,
    rank_keep_count,
    rater_relation,
    recycle_counts,
    sparsevlm_raters,
    sparsevlm_recycle,
    sparsevlm_scores,
)


# ----------------------------------------------------------------------------- text raters
def test_raters_by_hand():
    # v1 = (1, 0), v2 = (0, 1); t1 = (2, 0), t2 = 0, t3 = (0, 2): logits v1 -> [2, 0, 0], v2 -> [0, 0, 2]
    vis = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    text = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]])
    e = math.exp(2.0)
    r = [(e / (e + 2) + 1 / (e + 2)) / 2, 1 / (e + 2), (1 / (e + 2) + e / (e + 2)) / 2]  # mean 1/3
    assert r[0] > 1 / 3 > r[1]
    assert sparsevlm_raters(vis, text).tolist() == [[True, False, True]]
    # t3 is padding: softmax over t1, t2 only -> r = [(e/(e+1) + 1/2) / 2, (1/(e+1) + 1/2) / 2], mean 1/2
    valid = torch.tensor([[True, True, False]])
    assert sparsevlm_raters(vis, text, valid).tolist() == [[True, False, False]]
    # batch rows are independent
    both = sparsevlm_raters(vis.expand(2, -1, -1), text.expand(2, -1, -1), torch.tensor([[True] * 3, [True, True, False]]))
    assert both.tolist() == [[True, False, True], [True, False, False]]


def test_raters_need_text():
    with pytest.raises(ValueError, match="no text tokens"):
        sparsevlm_raters(torch.ones(1, 2, 2), torch.ones(1, 2, 2), torch.zeros(1, 2, dtype=torch.bool))


# ------------------------------------------------------------------------ scores and counts
def test_scores_average_heads_then_raters():
    # 2 heads, 3 text queries, 5 keys of which columns 1..3 are visual; raters = queries 0 and 2
    probs = torch.zeros(1, 2, 3, 5)
    probs[0, 0, 0, 1:4] = torch.tensor([0.1, 0.2, 0.3])
    probs[0, 1, 0, 1:4] = torch.tensor([0.3, 0.2, 0.1])  # head mean of query 0: [0.2, 0.2, 0.2]
    probs[0, :, 1, 1:4] = 0.9  # not a rater: ignored
    probs[0, 0, 2, 1:4] = torch.tensor([0.0, 0.4, 0.8])
    probs[0, 1, 2, 1:4] = torch.tensor([0.0, 0.0, 0.0])  # head mean of query 2: [0.0, 0.2, 0.4]
    raters = torch.tensor([[True, False, True]])
    rel = rater_relation(probs, raters, torch.tensor([[1, 2, 3]]))
    torch.testing.assert_close(sparsevlm_scores(rel, raters), torch.tensor([[0.1, 0.2, 0.3]]))


def test_keep_mask_top_k_in_original_order_ties_low_index():
    s = torch.tensor([[0.5, 0.1, 0.5, 0.9, 0.2]])
    assert keep_mask(s, 2).nonzero()[:, 1].tolist() == [0, 3]  # 0.9, then the first of the tied 0.5
    assert keep_mask(s, 3).nonzero()[:, 1].tolist() == [0, 2, 3]


def test_fixed_count_and_its_clamp():
    assert fixed_keep_count(576, 300) == 300
    assert fixed_keep_count(309, 200) == 200
    assert fixed_keep_count(10, 10) is None  # ours: a budget covering every token keeps all
    assert fixed_keep_count(10, 10, clamp="reference") == 9  # the reference: min(k, n_v - 1)
    with pytest.raises(ValueError, match="clamp"):
        fixed_keep_count(10, 3, clamp="nope")


def test_rank_count():
    # two raters with proportional rows: rank 1 -> int(1 * 2.5 + 1) = 3 of 6
    rel = torch.zeros(1, 3, 6)
    rel[0, 0] = torch.tensor([1.0, 2, 3, 4, 5, 6])
    rel[0, 2] = 2 * rel[0, 0]
    rel[0, 1] = torch.tensor([9.0, 0, 0, 0, 0, 1])  # not a rater
    raters = torch.tensor([[True, False, True]])
    assert rank_keep_count(rel, raters, scale=2.5, bias=1.0) == [3]
    # with the third row as a rater too: rank 2 -> int(2 * 2.5 + 1) = 6 -> clamped to n_v - 1 = 5
    assert rank_keep_count(rel, torch.tensor([[True, True, True]]), scale=2.5, bias=1.0) == [5]
    # full rank (rank == n_v): no pruning at this layer
    eye = torch.eye(3)[None]
    assert rank_keep_count(eye, torch.ones(1, 3, dtype=torch.bool), scale=1.0, bias=0.0) == [None]


# ------------------------------------------------------------------------------ recycling
def test_recycle_counts_match_the_reference_formula():
    assert recycle_counts(276, 0.3, 10) == (83, 9)  # 576 - 300 deleted at the 192 row's first layer
    assert recycle_counts(109, 0.3, 10) == (33, 4)
    assert recycle_counts(94, 0.3, 10) == (29, 3)
    assert recycle_counts(1, 0.3, 10) == (1, 1)
    assert recycle_counts(0, 0.3, 10) == (0, 0)


def test_dpc_knn_by_hand():
    # 1-D points (C = 1, so distances are |x_i - x_j|), 3 clusters -> density from the 3 nearest
    # (itself included).  rho: p1 (0.1) is densest (exp(-0.05/3)), then p0 (exp(-0.1/3)), p2
    # (exp(-0.13/3)), p3, p4, p5.  delta: p1 -> max distance 10; p0 -> 0.1; p2 -> 0.2; p3 -> 4.7;
    # p4 -> 0.2; p5 -> 4.8.  rho * delta: p1 9.83 > p2 0.19 > p0 0.097 > p3 > p4 > p5.
    x = torch.tensor([0.0, 0.1, 0.3, 5.0, 5.2, 10.0])[None, :, None]
    centres, assign = dpc_knn_clusters(x, 3)
    assert centres.tolist() == [[1, 2, 0]]
    # p3, p4, p5 are nearest to p2 (centre #1): 4.7 < 4.9 < 5.0 and so on
    assert assign.tolist() == [[2, 0, 1, 1, 1, 1]]


def test_recycle_merges_the_top_scored_deleted_tokens():
    # 12 deleted tokens; m = int(12 * 0.3) + 1 = 4 highest scores -> c = int(4 / 10) + 1 = 1 cluster
    x = torch.arange(12, dtype=torch.float32)[None, :, None].repeat(1, 1, 2)  # (1, 12, 2)
    score = torch.tensor([[0.0, 9, 1, 8, 2, 7, 3, 6, 4, 5, 0.5, 0.1]])
    out = sparsevlm_recycle(x, score)
    assert out.chosen.tolist() == [[1, 3, 5, 7]]
    torch.testing.assert_close(out.tokens, torch.full((1, 1, 2), (1 + 3 + 5 + 7) / (4 + 1e-6)))
    assert sparsevlm_recycle(x[:, :0], score[:, :0]) is None


def test_reference_schedules_are_the_official_ones():
    assert SPARSEVLM_SCHEDULES[192] == (300, 200, 110)
    assert SPARSEVLM_SCHEDULES[128] == (303, 110, 36)
    assert SPARSEVLM_SCHEDULES[64] == (66, 30, 17)


def test_layers_schedule_and_plan():
    from llava_restore.reduction.sparsevlm import sparsevlm_layers, sparsevlm_plan, sparsevlm_schedule

    assert sparsevlm_layers(32) == (2, 6, 15)
    assert sparsevlm_layers(4) == (0, 1, 2)  # round(2/8), round(6/8), round(15/8)
    with pytest.raises(ValueError, match=r"strictly increasing in \[0, 2\].*set sparsevlm_layers"):
        sparsevlm_layers(4, [1, 3])
    with pytest.raises(ValueError, match="strictly increasing"):
        sparsevlm_layers(2)  # (0, 0, 0): collide
    with pytest.raises(ValueError, match=r"reference schedules for n_vis in \[64, 96, 128, 192\], not 100"):
        sparsevlm_schedule(100, 3)
    with pytest.raises(ValueError, match="one count >= 1 per pruning layer"):
        sparsevlm_schedule(100, 3, [5, 4])
    # the 192 row on LLaVA-1.5 (576 tokens, 32 layers), by hand: after layer 2 keep 300 + recycle
    # 276 deleted -> 83 -> 9 merged = 309; after 6: 200 + (109 -> 33 -> 4) = 204; after 15:
    # 110 + (94 -> 29 -> 3) = 113.  Tokens leaving each layer average (2*576 + 4*309 + 9*204 + 17*113) / 32
    plan = sparsevlm_plan(576, 32, (2, 6, 15), (300, 200, 110))
    assert plan[:2] == [576, 576] and set(plan[2:6]) == {309} and set(plan[6:15]) == {204} and set(plan[15:]) == {113}
    assert sum(plan) / 32 == pytest.approx((2 * 576 + 4 * 309 + 9 * 204 + 17 * 113) / 32)  # 192.03
    p128 = sparsevlm_plan(576, 32, (2, 6, 15), (303, 110, 36))  # 303 + 9, 110 + 7, 36 + 3
    assert (p128[2], p128[6], p128[15]) == (312, 117, 39)
    p64 = sparsevlm_plan(576, 32, (2, 6, 15), (66, 30, 17))  # 66 + 16, 30 + 2, 17 + 1
    assert (p64[2], p64[6], p64[15]) == (82, 32, 18)
    assert sparsevlm_plan(576, 32, (2, 6, 15), (576, 576, 576)) == [576] * 32
