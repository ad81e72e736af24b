"""SparseVLM: the pure tensor functions against hand-computed values from the method's definition
(text raters, scores, the keep counts, DPC-kNN recycling), then the decoder integration."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import (assert_distinguishes, cached_greedy, make_batch, one_thread,  # noqa: F401
                     randomize_vectors, sensitive_tiny)
from llava_restore.model.attention import AttnContext
from llava_restore.model.llama import rope_cos_sin
from llava_restore.reduction import make_reduction_config
from llava_restore.reduction.inllm import DropEvent, LayerView
from llava_restore.reduction.sparsevlm import (
    SPARSEVLM_SCHEDULES,
    SparseVLM,
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

pytestmark = pytest.mark.usefixtures("one_thread")


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


# ============================================================================ in the decoder

LAYERS = 4
N = 576


def tiny4():
    return sensitive_tiny(0, 0.2, LAYERS)


def cfg_of(n_vis=None, **opts):
    return make_reduction_config(dict(opts), method="sparsevlm", n_vis=n_vis).resolve()


# the 4-layer tiny model: drops after layers 0, 1, 2 (the reference 2, 6, 15 of 32, scaled)
SPEC = dict(n_vis=192)  # keeps 300 + 9 recycled, 200 + 4, 110 + 3
SMALL = dict(n_vis=None, sparsevlm_schedule=[250, 40], sparsevlm_layers=[0, 2])


def test_decide_hand_checked_from_crafted_embeddings_and_attention():
    """Layout [p0 | v1 v2 v3 v4 | t5 t6 t7]; the input embeddings make t5 and t7 the raters (see
    test_raters_by_hand: two visual directions, t6 = 0); q.k crafted per head.  Head 0 of t5
    scores the keys s5, of t7 s7; head 1's queries are 0 (uniform over the allowed keys).  The
    non-rater t6 attends to v3 only, which must not count."""
    L, d, D = 8, 4, 2
    visual = torch.tensor([[0, 1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    valid = torch.ones(1, L, dtype=torch.bool)
    h0 = torch.tensor([[[0.0, 0], [1, 0], [0, 1], [1, 0], [0, 1], [2, 0], [0, 0], [0, 2]]])
    s5 = torch.tensor([0.0, 3, 1, 0, 2, 0, 0, 0])  # row 5 sees keys 0..5
    s7 = torch.tensor([0.0, 0, 2, 0, 1, 0, 0, 0])  # row 7 sees keys 0..7
    k = torch.zeros(1, 1, L, d)
    k[0, 0, :, 0], k[0, 0, :, 1] = 2 * s5, 2 * s7  # q.k / sqrt(4)
    k[0, 0, 3, 2] = 2 * 50.0  # only t6's query (e_2) sees this: v3 for the non-rater
    q = torch.zeros(1, 2, L, d)
    q[0, 0, 5, 0], q[0, 0, 7, 1], q[0, 0, 6, 2] = 1.0, 1.0, 1.0
    h = torch.arange(L * D, dtype=torch.float32).view(1, L, D)  # the pruning layer's outputs
    view = LayerView(h=h, visual=visual, valid=valid, positions=torch.arange(L).float()[None],
                     n_images=torch.tensor([1]), k=k,
                     q_rows=lambda rows: q.gather(2, rows[:, None, :, None].expand(1, 2, rows.shape[1], d)),
                     h0=h0, valid0=valid, visual0=visual, orig=torch.arange(L)[None])
    # the definition by hand: head mean of softmax rows, mean over the raters t5, t7
    e = torch.exp
    z5 = e(torch.tensor(0.0)) * 3 + e(torch.tensor(3.0)) + e(torch.tensor(1.0)) + e(torch.tensor(2.0))
    z7 = 6 + e(torch.tensor(2.0)) + e(torch.tensor(1.0))
    p5 = torch.stack([e(torch.tensor(3.0)), e(torch.tensor(1.0)), torch.tensor(1.0), e(torch.tensor(2.0))]) / z5
    p7 = torch.stack([torch.tensor(1.0), e(torch.tensor(2.0)), torch.tensor(1.0), e(torch.tensor(1.0))]) / z7
    score = ((p5 + 1 / 6) / 2 + (p7 + 1 / 8) / 2) / 2  # v1..v4: heads, then raters
    order = score.argsort(descending=True).tolist()
    assert order == [0, 1, 3, 2]  # v1 > v2 > v4 > v3 (v3 would win if t6 counted)
    cfg = cfg_of(None, sparsevlm_schedule=[2], sparsevlm_layers=[0])
    dec = SparseVLM().decide(DropEvent(0, 1, 2, 1), view, cfg)
    assert dec.keep.tolist() == [[True, True, True, False, False, True, True, True]]  # v1, v2 kept
    # recycling: 2 deleted (v3, v4) -> m = int(0.6) + 1 = 1, the better-rated v4 -> 1 cluster = v4 / (1 + 1e-6)
    torch.testing.assert_close(dec.extra_h, h[:, 4:5] / (1 + 1e-6))
    assert dec.extra_valid.tolist() == [[True]] and dec.extra_pos.tolist() == [[4.0]]
    no_rec = SparseVLM().decide(DropEvent(0, 1, 2, 1), view, cfg_of(None, sparsevlm_schedule=[2], sparsevlm_layers=[0],
                                                                     sparsevlm_recycle=False))
    assert no_rec.extra_h is None and torch.equal(no_rec.keep, dec.keep)


# ----------------------------------------------------------------------------- the definition
@torch.no_grad()
def staged_reference(model, embeds, visual, layers, keeps, recycle=True, gen_embeds=None):
    """SparseVLM for one unpadded sample, written out: raters from the prompt's input embeddings;
    after each pruning layer (eager probabilities) the head-mean attention of the raters ranks the
    visual tokens, the top k stay in order, the best-rated 30% (+1) of the deleted are DPC-kNN
    merged and inserted after them; positions 0, 1, ... after every drop.  gen_embeds: tokens
    after the prompt.  Returns (last logits, [kept original visual indices per drop])."""
    L = embeds.shape[1]
    vis_idx = visual.nonzero().flatten()
    text_idx = torch.arange(int(vis_idx.max()) + 1, L)
    r = sparsevlm_raters(embeds[:, vis_idx], embeds[:, text_idx])[0]
    h = embeds if gen_embeds is None else torch.cat([embeds, gen_embeds], 1)
    T = h.shape[1] - L
    is_vis = torch.cat([visual, torch.zeros(T, dtype=torch.bool)])
    rater = torch.zeros(L + T, dtype=torch.bool)
    rater[text_idx[r]] = True
    orig = torch.arange(L + T)  # original index, -1 for a merged token
    t = model.config.text
    rec, kept_sets = {}, []
    for i in range(t.num_hidden_layers):
        n = h.shape[1]
        pos = torch.arange(n).float()[None]  # 0, 1, ... (reindexed after every drop)
        cos, sin = rope_cos_sin(pos, t.head_dim, t.rope_theta, h.dtype)
        ctx = AttnContext(key_valid=torch.ones(1, n, dtype=torch.bool), query_pos=pos, key_pos=pos, backend="eager",
                          rope_theta=t.rope_theta, head_dim=t.head_dim, record_probs=lambda li, p: rec.__setitem__(li, p))
        h = model.model.layers[i](h, cos, sin, ctx, None)
        if i not in layers:
            continue
        probs = rec[i][0].mean(0)  # (n, n)
        rows = (orig >= 0) & rater[orig.clamp(min=0)]
        vis_now = (orig < 0) | is_vis[orig.clamp(min=0)]
        score = probs[rows].mean(0)  # (n,)
        cand = vis_now.nonzero().flatten()
        k = keeps[layers.index(i)]
        top = cand[score[cand].argsort(descending=True)[:k]]
        stay = ~vis_now
        stay[top] = True
        deleted = cand[~stay[cand]]
        parts_h, parts_o = [], []
        first_text = int((~vis_now & (torch.arange(n) > int(cand.max()))).nonzero()[0])
        kept_h, kept_o = h[:, stay], orig[stay]
        n_before = int(stay[:first_text].sum())  # prefix + kept visual
        if recycle and deleted.numel():
            out = sparsevlm_recycle(h[:, deleted], score[deleted][None])
            parts_h = [kept_h[:, :n_before], out.tokens, kept_h[:, n_before:]]
            parts_o = [kept_o[:n_before], torch.full((out.tokens.shape[1],), -1), kept_o[n_before:]]
            h, orig = torch.cat(parts_h, 1), torch.cat(parts_o)
        else:
            h, orig = kept_h, kept_o
        kept_sets.append(sorted(int(o) for o in orig if o >= 0 and is_vis[o]))
    logits = model.lm_head(model.model.norm(h))[0, -1]
    return logits, kept_sets


def single(model, tok, proc, question, seed):
    ids, mask, images, _ = make_batch(tok, proc, [question], [seed])
    return ids, mask, images, model.prepare_multimodal(ids, mask, images)


def plan_of(cfg):
    s = SparseVLM().schedule(cfg, LAYERS, N)
    return [e.score_layer for e in s.events], [e.keep for e in s.events]


@pytest.mark.parametrize("spec", [SPEC, SMALL], ids=["n192", "custom"])
def test_dropped_tokens_per_layer_match_the_definition(spec):
    tok, model, proc = tiny4()
    ids, mask, images, prep = single(model, tok, proc, "What colour is the large object on the left?", 3)
    cfg = cfg_of(**spec)
    out = model(ids, mask, images, reduction=cfg, attn_backend="eager")
    rep = out.prepared.inllm
    layers, keeps = plan_of(cfg)
    ref_logits, ref_kept = staged_reference(model, prep.embeds, prep.visual[0], layers, keeps)
    vis0 = prep.visual[0]
    got = [sorted(kk[0].nonzero().flatten()[vis0[kk[0]]].tolist()) for kk in rep.kept]
    assert got == ref_kept
    # each drop keeps exactly the schedule's count of the tokens there (merged ones included)
    assert rep.visual_per_layer[0].tolist() == rep.schedule.counts
    if spec is SPEC:
        assert rep.schedule.counts == [576, 309, 204, 113]
    bad_logits, _ = staged_reference(model, prep.embeds, prep.visual[0], layers, keeps, recycle=False)
    assert_distinguishes(ref_logits, out.logits[0, -1], bad_logits, rtol=1e-4, atol=1e-4)


def test_budget_n_at_every_stage_equals_the_unreduced_model():
    tok, model, proc = tiny4()
    ids, mask, images, _ = make_batch(tok, proc, ["What is it?", "Where is the small red thing now?"], [1, 2])
    out = model(ids, mask, images, padding_side="left")
    full, rows = out.logits, out.prepared.valid
    same = model(ids, mask, images, reduction=cfg_of(None, sparsevlm_schedule=[N, N, N]), padding_side="left").logits
    bad = model(ids, mask, images, reduction=cfg_of(None, sparsevlm_schedule=[N - 24, N, N]), padding_side="left").logits
    assert_distinguishes(full[:, -1], same[:, -1], bad[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(same[rows], full[rows], rtol=1e-5, atol=1e-5)


RANK = dict(n_vis=192, sparsevlm_count="rank", sparsevlm_rank_scale=40.0, sparsevlm_layers=[0, 1, 2])


@pytest.mark.parametrize("opts", [SPEC, RANK],
                         ids=["fixed", "rank"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_of_three_mixed_lengths_equals_each_alone(opts, side):
    tok, model, proc = tiny4()
    qs = ["What is it?", "Describe the picture in many more words than that, please.", "Count the dots."]
    ids, mask, images, singles = make_batch(tok, proc, qs, [4, 5, 6], side=side)
    cfg = cfg_of(**opts)
    out = model(ids, mask, images, reduction=cfg, padding_side=side)
    valid = out.prepared.valid
    last = torch.where(valid, torch.arange(valid.shape[1]), -1).max(1).values
    batched = out.logits[torch.arange(3), last]
    alone_out = [model(s[None], None, images[b:b + 1], reduction=cfg) for b, s in enumerate(singles)]
    alone = torch.stack([o.logits[0, -1] for o in alone_out])
    shuffled = torch.stack([model(s[None], None, images[(b + 1) % 3:(b + 1) % 3 + 1], reduction=cfg).logits[0, -1]
                            for b, s in enumerate(singles)])
    assert_distinguishes(alone, batched, shuffled, rtol=1e-4, atol=1e-4)
    for b in range(3):  # the same visual counts per layer as alone (rank: they differ between rows)
        assert out.prepared.inllm.visual_per_layer[b].tolist() == alone_out[b].prepared.inllm.visual_per_layer[0].tolist()
    ids_l, mask_l, images_l, _ = make_batch(tok, proc, qs, [4, 5, 6], side="left")
    gen = model.generate(ids_l, mask_l, images_l, reduction=cfg, max_new_tokens=5, eos_token_id=-1)
    for b, s in enumerate(singles):
        one = model.generate(s[None], None, images[b:b + 1], reduction=cfg, max_new_tokens=5, eos_token_id=-1)
        assert gen[b].tolist() == one[0].tolist()


def test_rank_counts_follow_the_rank_rule():
    """rank mode: each drop keeps min(int(rank * scale + bias), n - 1) of the n tokens there."""
    tok, model, proc = tiny4()
    ids, mask, images, _ = single(model, tok, proc, "Where is the small red thing now?", 2)
    cfg = cfg_of(192, sparsevlm_count="rank", sparsevlm_rank_scale=40.0, sparsevlm_rank_bias=3.0,
                 sparsevlm_recycle=False, sparsevlm_layers=[0, 1, 2])
    rep = model(ids, mask, images, reduction=cfg).prepared.inllm
    counts = rep.visual_per_layer[0].tolist()
    assert [e.drop_layer for e in rep.schedule.events] == [1, 2, 3] and counts[0] == N
    for prev, c in zip(counts, counts[1:]):
        assert c == prev - 1 or (c < prev and (c - 3) % 40 == 0), counts
    with pytest.raises(ValueError, match=r"reference layers \[2, 6, 15, 19\] of 32 scaled to 4 gives layers \[0, 1, 2, 2\]"):
        model(ids, mask, images, reduction=cfg_of(192, sparsevlm_count="rank"))


def test_kv_cache_decoding_equals_recomputation():
    """Cached decode steps equal the definition recomputed over prompt + generated tokens (raters
    and drops decided on the prompt).  Planted error: the stages' positions shifted."""
    tok, model, proc = tiny4()
    ids, mask, images, prep = single(model, tok, proc, "What is on the left of the circle?", 7)
    cfg = cfg_of(**SPEC)
    layers, keeps = plan_of(cfg)
    steps = 4

    def decode(plant=False):
        return cached_greedy(model, ids, mask, images, cfg, steps, plant)

    toks, cached = decode()
    ref = torch.stack([staged_reference(model, prep.embeds, prep.visual[0], layers, keeps,
                                        gen_embeds=model.model.embed_tokens(torch.tensor([toks[:t]])))[0]
                       for t in range(1, steps + 1)])
    _, planted = decode(plant=True)
    assert_distinguishes(ref, cached, planted, rtol=1e-4, atol=1e-4)
    assert model.generate(ids, mask, images, reduction=cfg, max_new_tokens=steps, eos_token_id=-1)[0].tolist() == toks


@pytest.mark.parametrize("opts,match", [
    (dict(n_vis=192, sparsevlm_layers=[1, 3]), r"strictly increasing in \[0, 2\] \(a 4-layer decoder"),
    (dict(n_vis=192, sparsevlm_layers=[2, 1]), "strictly increasing"),
    (dict(n_vis=100), r"reference schedules for n_vis in \[64, 96, 128, 192\], not 100"),
    (dict(n_vis=None), "sparsevlm needs n_vis"),
    (dict(n_vis=None, sparsevlm_schedule=[300, 200]), r"one count >= 1 per pruning layer \(3\)"),
    (dict(n_vis=None, sparsevlm_schedule=[700, 200, 100]), "keeps more than the N=576"),
    (dict(n_vis=1000), "n_vis=1000 must be in 1..N=576"),
    (dict(n_vis=100, sparsevlm_count="rank", sparsevlm_layers=[0, 1]), r"\(scale, bias\) for n_vis in \[64, 128, 192\], not 100"),
])
def test_bad_options_fail_clearly(opts, match):
    tok, model, proc = tiny4()
    ids, mask, images, _ = make_batch(tok, proc, ["What is it?"], [1])
    with pytest.raises(ValueError, match=match):
        model(ids, mask, images, reduction=cfg_of(**opts))


def test_bad_values_fail_at_config_time():
    with pytest.raises(ValueError, match="sparsevlm_count='ranked' is not one of"):
        make_reduction_config(method="sparsevlm", n_vis=64, sparsevlm_count="ranked")
    with pytest.raises(ValueError, match="sparsevlm_recycle_ratio=1.5 must be in"):
        make_reduction_config(method="sparsevlm", n_vis=64, sparsevlm_recycle_ratio=1.5)
    with pytest.raises(ValueError, match="comparison row without RESTORE"):
        tok, model, proc = tiny4()
        ids, mask, images, _ = make_batch(tok, proc, ["What is it?"], [1])
        model(ids, mask, images, reduction=make_reduction_config(method="sparsevlm", n_vis=64, restore=True).resolve())
