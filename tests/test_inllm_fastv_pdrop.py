"""In-LLM reduction (FastV, PDrop): selections from the definition, budgets, batching, the KV cache
and bad options.

The reference here (``staged_reference``) is the definition written out for one sample: at each
drop it reads the layer's softmax attention from the eager backend's own probabilities, keeps the
top-k visual tokens of the last prompt token's (head-mean) row, subsets the sequence by index
and runs the remaining layers on it with the method's positions.  It shares no code with
``llava_restore.reduction.inllm``.
"""
from __future__ import annotations


import pytest
import torch

from helpers import (assert_distinguishes, cached_greedy, make_batch, one_thread,  # noqa: F401
                     randomize_vectors, sensitive_tiny)
from llava_restore.model.attention import AttnContext
from llava_restore.model.llama import rope_cos_sin
from llava_restore.reduction import make_reduction_config
from llava_restore.reduction.inllm import FastV, LayerView, PDrop, attention_probs, solve_lambda

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 4
N = 576


def tiny4():
    return sensitive_tiny(0, 0.2, LAYERS)


def cfg_of(method, n_vis=None, **opts):
    return make_reduction_config(dict(opts), method=method, n_vis=n_vis).resolve()


FASTV = dict(method="fastv", n_vis=300, fastv_k=1)  # R = (4*300 - 576) / 3 = 208 from layer 1 on
PDROP = dict(method="pdrop", n_vis=300, pdrop_layers=[1, 2, 3])


def cfg_dict(d, **more):
    d = {**d, **more}
    return cfg_of(d.pop("method"), d.pop("n_vis"), **d)


# ----------------------------------------------------------------------------- the definition
@torch.no_grad()
def staged_reference(model, embeds, visual, positions, events, mode, gen_embeds=None):
    """One sample, no padding.  embeds (1, L, D) prompt, visual (L,) bool, positions (L,) float,
    events [(score_layer, drop_layer, keep)], mode retain|reindex, gen_embeds (1, T, D) text after
    the prompt (at positions next, next+1, ...).  Returns (last logits (V,), kept index lists)."""
    L = embeds.shape[1]
    h = embeds if gen_embeds is None else torch.cat([embeds, gen_embeds], 1)
    T = h.shape[1] - L
    pos0 = torch.cat([positions, positions.max() + 1 + torch.arange(T).float()])
    vis = torch.cat([visual, torch.zeros(T, dtype=torch.bool)])
    cur = torch.arange(L + T)  # original indices still in the sequence
    t = model.config.text
    recorded = {}
    kept_sets = []

    def run(i, h, cur, record):
        pos = (pos0[cur] if mode == "retain" else torch.arange(len(cur)).float())[None]
        cos, sin = rope_cos_sin(pos, t.head_dim, t.rope_theta, h.dtype)
        ctx = AttnContext(key_valid=torch.ones(1, len(cur), dtype=torch.bool), query_pos=pos, key_pos=pos,
                          backend="eager", rope_theta=t.rope_theta, head_dim=t.head_dim,
                          record_probs=(lambda li, p: recorded.__setitem__(li, p)) if record else None)
        return model.model.layers[i](h, cos, sin, ctx, None)

    for i in range(t.num_hidden_layers):
        for score_layer, drop_layer, keep in events:
            if drop_layer != i:
                continue
            if score_layer == i:  # this layer's attention on the sequence entering it
                run(i, h, cur, record=True)
            probs = recorded[score_layer][0].mean(0)  # (Lq, Lk) head mean
            q = int((cur == L - 1).nonzero())  # the last prompt token
            score = probs[q]
            vis_cur = vis[cur]
            cand = vis_cur.nonzero().flatten()
            top = cand[score[cand].argsort(descending=True)[:keep]]
            stay = torch.zeros(len(cur), dtype=torch.bool)
            stay[~vis_cur] = True
            stay[top] = True
            h, cur = h[:, stay], cur[stay]
            kept_sets.append(sorted(cur[vis[cur]].tolist()))
        h = run(i, h, cur, record=True)
    logits = model.lm_head(model.model.norm(h))[0, -1]
    return logits, kept_sets


def single_prepared(model, tok, proc, question, seed):
    ids, mask, images, _ = make_batch(tok, proc, [question], [seed])
    prep = model.prepare_multimodal(ids, mask, images)
    return ids, mask, images, prep


def events_of(cfg):
    sched = (FastV() if cfg.method == "fastv" else PDrop()).schedule(cfg, LAYERS, N)
    return [(e.score_layer, e.drop_layer, e.keep) for e in sched.events]


# ----------------------------------------------------------------------------- hand-checked
def test_selection_hand_checked_from_crafted_attention():
    """q.k crafted so the last token's attention ranks the visual tokens 5 > 3 > 2 > 4 (and text
    token 0 highest of all, which must not count); FastV and PDrop keep the top 2: tokens 3 and 5."""
    L, d = 8, 4
    visual = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    s = torch.tensor([9.0, 0.0, 2.0, 3.0, 1.0, 4.0, 0.0, 0.0])  # q.k / sqrt(d) of the last query
    k = torch.zeros(1, 1, L, d)
    k[0, 0, :, 0] = s * 2.0  # sqrt(d) = 2
    q = torch.zeros(1, 2, L, d)
    q[0, :, :, 0] = 1.0  # two heads, both the same query direction (GQA: 1 kv head)
    view = LayerView(h=torch.zeros(1, L, 3), visual=visual, valid=torch.ones(1, L, dtype=torch.bool),
                     positions=torch.arange(L).float()[None], n_images=torch.tensor([1]), k=k,
                     q_rows=lambda rows: q.gather(2, rows[:, None, :, None].expand(1, 2, rows.shape[1], d)))
    p = view.probs(torch.tensor([[L - 1]]))[0, 0, 0]
    torch.testing.assert_close(p, torch.softmax(s, 0))  # the definition: softmax over the allowed keys
    expected = torch.tensor([[1, 1, 0, 1, 0, 1, 1, 1]], dtype=torch.bool)  # text + {3, 5}
    for policy, cfg in ((FastV(), cfg_of("fastv", None, fastv_keep=2, fastv_k=1)),
                        (PDrop(), cfg_of("pdrop", None, pdrop_lambda=0.5, pdrop_layers=[1]))):
        event = policy.schedule(cfg, LAYERS, 4).events[0]
        assert event.keep == 2
        assert torch.equal(policy.decide(event, view, cfg).keep, expected)
    # inllm_query=instruction: the mean over the text after the image (rows 6 and 7); row 6's
    # query is made to prefer token 2 strongly, row 7 is the one above: the mean ranks 2 first
    q2 = q.clone()
    q2[0, :, 6, 0] = 0.0
    q2[0, :, 6, 1] = 1.0
    k2 = k.clone()
    k2[0, 0, 2, 1] = 20.0  # q6.k2 / 2 = 10: row 6 puts ~all its mass on token 2
    view2 = LayerView(h=view.h, visual=visual, valid=view.valid, positions=view.positions, n_images=view.n_images,
                      k=k2, q_rows=lambda rows: q2.gather(2, rows[:, None, :, None].expand(1, 2, rows.shape[1], d)))
    cfg_i = cfg_of("fastv", None, fastv_keep=1, fastv_k=1, inllm_query="instruction")
    ev = FastV().schedule(cfg_i, LAYERS, 4).events[0]
    p6 = torch.softmax(torch.tensor([0.0, 0, 10, 0, 0, 0, 0]), 0)  # row 6 sees keys 0..6
    p7 = torch.softmax(s, 0)  # row 7's query has no dim-1 component: unchanged
    mean = (torch.cat([p6, torch.zeros(1)]) + p7) / 2
    assert int(mean[2:6].argmax()) + 2 == 2
    assert FastV().decide(ev, view2, cfg_i).keep[0].tolist() == [True, True, True, False, False, False, True, True]
    # causality: a query at index 3 cannot see key 5 (its best), so it keeps 3 and 2
    rows = torch.tensor([[3]])
    p3 = view.probs(rows)[0, 0, 0]
    assert p3[4:].sum() == 0 and p3[3] > p3[2] > 0


@pytest.mark.parametrize("spec", [FASTV, PDROP], ids=["fastv", "pdrop"])
def test_dropped_tokens_per_layer_match_the_definition(spec):
    tok, model, proc = tiny4()
    ids, mask, images, prep = single_prepared(model, tok, proc, "What colour is the large object?", 3)
    cfg = cfg_dict(spec)
    out = model(ids, mask, images, reduction=cfg, attn_backend="eager")
    rep = out.prepared.inllm
    mode = "retain" if cfg.method == "fastv" else "reindex"
    ref_logits, ref_kept = staged_reference(model, prep.embeds, prep.visual[0], prep.positions[0], events_of(cfg), mode)
    vis_idx = prep.visual[0].nonzero().flatten()
    got = [sorted(k[0].nonzero().flatten()[prep.visual[0][k[0]]].tolist()) for k in rep.kept]
    assert got == ref_kept
    assert [len(k) for k in got] == [e[2] for e in events_of(cfg)]
    # the per-layer counts: N before the first drop, then each stage's budget; their mean is n_vis
    assert rep.visual_per_layer[0].tolist() == rep.schedule.counts
    assert abs(rep.schedule.average - 300) < 1
    assert set(ref_kept[0]) < set(vis_idx.tolist())
    # and the logits of the answer row, against a perturbed selection (the lowest-ranked kept swapped)
    bad_events = [(s, d, k - 1) for s, d, k in events_of(cfg)]
    bad_logits, _ = staged_reference(model, prep.embeds, prep.visual[0], prep.positions[0], bad_events, mode)
    assert_distinguishes(ref_logits, out.logits[0, -1], bad_logits, rtol=1e-4, atol=1e-4)


def test_fastv_and_pdrop_schedules_of_the_paper_rows():
    """32 layers, N = 576: FastV K=2 keeps round((32 n - 2 N) / 30); PDrop [2, 8, 16] with lambda
    from the layer average; both averages within one token of n."""
    for n, R in ((192, 166), (128, 98), (64, 30)):
        s = FastV().schedule(cfg_of("fastv", n), 32, N)
        assert s.counts[:2] == [N, N] and set(s.counts[2:]) == {R} and abs(s.average - n) < 0.5
        p = PDrop().schedule(cfg_of("pdrop", n), 32, N)
        assert [e.drop_layer for e in p.events] == [2, 8, 16]
        assert abs(p.average - n) < 1.5, (n, p.average)
        lam = solve_lambda(N, n, [2, 8, 16], 32)
        assert [e.keep for e in p.events] == [int(N * lam ** s) for s in (1, 2, 3)]
    # the PDrop maintainer's 64-token example: lambda ~ 0.19 with [2, 8, 16]
    assert abs(solve_lambda(N, 64, [2, 8, 16], 32) - 0.19) < 0.005


# ----------------------------------------------------------------------------- equivalences
@pytest.mark.parametrize("method,opts", [("fastv", dict(fastv_k=1)), ("pdrop", dict(pdrop_layers=[1, 2, 3]))])
def test_budget_n_equals_the_unreduced_model(method, opts):
    tok, model, proc = tiny4()
    ids, mask, images, _ = make_batch(tok, proc, ["What is it?", "Where is the small red thing now?"], [1, 2])
    out = model(ids, mask, images, padding_side="left")
    full, rows = out.logits, out.prepared.valid  # every real row; visual rows are all kept here
    same = model(ids, mask, images, reduction=cfg_of(method, N, **opts), padding_side="left").logits
    bad = model(ids, mask, images, reduction=cfg_of(method, N - 24, **opts), padding_side="left").logits
    assert_distinguishes(full[:, -1], same[:, -1], bad[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(same[rows], full[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", [FASTV, PDROP], ids=["fastv", "pdrop"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_of_three_mixed_lengths_equals_each_alone(spec, side):
    tok, model, proc = tiny4()
    qs = ["What is it?", "Describe the picture in many more words than that, please.", "Count the dots."]
    ids, mask, images, singles = make_batch(tok, proc, qs, [4, 5, 6], side=side)
    cfg = cfg_dict(spec)
    out = model(ids, mask, images, reduction=cfg, padding_side=side)
    valid = out.prepared.valid
    last = torch.where(valid, torch.arange(valid.shape[1]), -1).max(1).values  # each row's last real token
    batched = out.logits[torch.arange(3), last]
    alone = torch.stack([model(s[None], None, images[b:b + 1], reduction=cfg).logits[0, -1]
                         for b, s in enumerate(singles)])
    shuffled = torch.stack([model(s[None], None, images[(b + 1) % 3:(b + 1) % 3 + 1], reduction=cfg).logits[0, -1]
                            for b, s in enumerate(singles)])
    assert_distinguishes(alone, batched, shuffled, rtol=1e-4, atol=1e-4)
    for b in range(3):  # the same tokens dropped per row
        got = out.prepared.inllm.visual_per_layer[b].tolist()
        assert got == out.prepared.inllm.schedule.counts
    # generate (left padding, KV cache) gives each row's own answer
    ids_l, mask_l, images_l, _ = make_batch(tok, proc, qs, [4, 5, 6], side="left")
    gen = model.generate(ids_l, mask_l, images_l, reduction=cfg, max_new_tokens=6, eos_token_id=-1)
    for b, s in enumerate(singles):
        one = model.generate(s[None], None, images[b:b + 1], reduction=cfg, max_new_tokens=6, eos_token_id=-1)
        assert gen[b].tolist() == one[0].tolist()


@pytest.mark.parametrize("spec", [FASTV, PDROP, {**FASTV, "inllm_positions": "reindex"},
                                  {**PDROP, "inllm_positions": "retain"}],
                         ids=["fastv", "pdrop", "fastv-reindex", "pdrop-retain"])
def test_kv_cache_decoding_equals_recomputation(spec):
    """Each cached decode step's logits equal the definition recomputed over prompt + generated
    tokens (the drop decided on the prompt, the generated tokens attending to the kept keys, at
    the method's positions).  Planted error: PDrop's stage positions ignored / FastV's kept keys
    replaced by the full layer-0 key set (cache stages removed)."""
    tok, model, proc = tiny4()
    ids, mask, images, prep = single_prepared(model, tok, proc, "What is on the left of the circle?", 7)
    cfg = cfg_dict(spec)
    mode = cfg.inllm_positions or ("retain" if cfg.method == "fastv" else "reindex")
    steps = 5

    def decode(plant=False):
        return cached_greedy(model, ids, mask, images, cfg, steps, plant)

    toks, cached = decode()
    ref = []
    for t in range(1, steps + 1):
        gen = model.model.embed_tokens(torch.tensor([toks[:t]]))
        logit, _ = staged_reference(model, prep.embeds, prep.visual[0], prep.positions[0], events_of(cfg), mode, gen)
        ref.append(logit)
    ref = torch.stack(ref)
    _, planted = decode(plant=True)
    assert_distinguishes(ref, cached, planted, rtol=1e-4, atol=1e-4)
    # generate's cached path gives the same tokens
    assert model.generate(ids, mask, images, reduction=cfg, max_new_tokens=steps, eos_token_id=-1)[0].tolist() == \
        toks[:steps]


@pytest.mark.parametrize("spec", [FASTV, PDROP], ids=["fastv", "pdrop"])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_sdpa_and_flex_equal_eager(spec, backend):
    tok, model, proc = tiny4()
    ids, mask, images, _ = make_batch(tok, proc, ["What is it?", "Where is the small red thing now?"], [1, 2])
    cfg = cfg_dict(spec)
    eager = model(ids, mask, images, reduction=cfg, padding_side="left", attn_backend="eager").logits[:, -1]
    other = model(ids, mask, images, reduction=cfg, padding_side="left", attn_backend=backend).logits[:, -1]
    torch.testing.assert_close(other, eager, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("method,opts,n,match", [
    ("fastv", dict(fastv_k=4), 300, "fastv_k=4 is out of range for a 4-layer decoder"),
    ("fastv", dict(fastv_k=0), 300, "fastv_k=0 is out of range"),
    ("fastv", dict(fastv_k=2), 200, "n_vis=200 cannot be met by FastV"),
    ("fastv", dict(fastv_keep=700), None, "fastv_keep=700 must be in 1..N=576"),
    ("fastv", dict(fastv_keep=100), 300, "gives a layer average of"),
    ("pdrop", dict(pdrop_layers=[8, 16, 24]), 300,
     r"pdrop_layers=\[8, 16, 24\]: layer 8 is out of range for a 4-layer decoder"),
    ("pdrop", dict(pdrop_layers=[2, 1]), 300, "strictly increasing"),
    ("pdrop", dict(pdrop_layers=[2, 3]), 200, "n_vis=200 cannot be met by PDrop"),
    ("pdrop", dict(pdrop_lambda=1.5, pdrop_layers=[1, 2, 3]), None, "pdrop_lambda=1.5 must be in"),
    ("fastv", dict(), 1000, "n_vis=1000 must be in 1..N=576"),
])
def test_bad_options_fail_clearly(method, opts, n, match):
    tok, model, proc = tiny4()
    ids, mask, images, _ = make_batch(tok, proc, ["What is it?"], [1])
    with pytest.raises(ValueError, match=match):
        model(ids, mask, images, reduction=cfg_of(method, n, **opts))


def test_restore_and_unknown_options_are_refused():
    tok, model, proc = tiny4()
    ids, mask, images, _ = make_batch(tok, proc, ["What is it?"], [1])
    cfg = make_reduction_config(method="fastv", n_vis=300, restore=True, fastv_k=1).resolve()
    with pytest.raises(ValueError, match="comparison row without RESTORE.*restore, merge, size_term"):
        model(ids, mask, images, reduction=cfg)
    with pytest.raises(ValueError, match="inllm_query='first' is not one of"):
        make_reduction_config(method="fastv", inllm_query="first")
    with pytest.raises(Exception, match="fastv_kk"):
        make_reduction_config(["fastv_kk=2"], method="fastv")


def test_attention_probs_matches_softmax_with_gqa():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 3, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    allowed = torch.rand(2, 3, 5, generator=g) > 0.3
    allowed[..., 0] = True
    p = attention_probs(q, k, allowed)
    kk = k.repeat_interleave(2, dim=1)
    ref = ((q @ kk.transpose(-1, -2)) / 8 ** 0.5).masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
    torch.testing.assert_close(p, ref)


# ----------------------------------------------------------------------------- efficiency
def test_efficiency_counts_per_layer_lengths():
    """FastV K=1 on 4 layers: layer 0 at the full length L, layers 1..3 at L - (N - R), plus the
    last token's attention row at layer 0 (2 H L d); the formula written out here by hand."""
    from llava_restore.analysis.efficiency import make_variants, measure, synthetic_batch

    tok, model, proc = tiny4()
    ids, mask, px = synthetic_batch(model, 1, 35, 30, "cpu")
    variants = make_variants(["fastv", "pdrop"], [300], [False, True], ["fastv_k=1", "pdrop_layers=[1,2,3]"])
    assert [v.name for v in variants] == ["full", "fastv-n300", "pdrop-n300"]  # no RESTORE variant
    rows = {r["name"]: r for r in measure(model, ids, mask, px, variants, repeats=1, warmup=0, clock="process")}
    t = model.config.text
    D, F, H, Hkv, d = t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim

    def layer(L):
        return 2 * L * D * H * d + 2 * L * D * 2 * Hkv * d + 2 * L * H * d * D + 4 * H * L * L * d + 6 * L * D * F

    L = 35 + N + 30
    R = (4 * 300 - N) // 3  # 208
    assert rows["full"]["llm_flops"] == 4 * layer(L)
    assert rows["fastv-n300"]["llm_flops"] == layer(L) + 3 * layer(L - (N - R)) + 2 * H * L * d
    assert rows["fastv-n300"]["visual_per_layer"] == [N, R, R, R]
    assert rows["fastv-n300"]["n_vis_layer_average"] == 300
    # PDrop: one q/k/v projection of the entering tokens + the row, at each of its 3 drops
    counts = rows["pdrop-n300"]["visual_per_layer"]
    lens = [L - (N - c) for c in counts]
    score = sum(2 * Lb * D * (H + 2 * Hkv) * d + 2 * H * Lb * d for Lb in lens[:3])
    assert rows["pdrop-n300"]["llm_flops"] == sum(layer(x) for x in lens) + score
    assert rows["pdrop-n300"]["kv_bytes_measured"] == sum(2 * Hkv * d * x * 4 for x in lens)


def test_schedule_summary_for_the_run_stats():
    from llava_restore.reduction.inllm import schedule_summary

    got = schedule_summary(cfg_of("fastv", 64), 32, N)
    assert got == {"method": "fastv", "n_vis_layer_average": (2 * N + 30 * 30) / 32, "n_visual": N,
                   "visual_per_layer": [N, N] + [30] * 30}


def test_cli_refuses_restore_with_an_in_llm_method(capsys):
    from llava_restore.eval.benchmarks import get_adapter
    from llava_restore.eval.generate import build_parser, settings_from_args

    adapter = get_adapter("loader")
    ap = build_parser(adapter)
    base = ["--question-file", "q.jsonl", "--answers-file", "a.jsonl", "--model-path", "m",
            "--reduction", "fastv", "--n-vis", "64"]
    ok = settings_from_args(ap.parse_args(base), adapter, ap)
    assert ok.reduction.method == "fastv" and ok.reduction.n_vis == 64
    with pytest.raises(SystemExit):
        settings_from_args(ap.parse_args(base + ["--restore"]), adapter, ap)
    assert "comparison row without RESTORE" in capsys.readouterr().err


@pytest.mark.parametrize("spec", [FASTV, PDROP], ids=["fastv", "pdrop"])
def test_cache_rows_dropped_mid_decoding(spec):
    """generate drops finished rows from the cache (KVCache.select_rows): the stages follow, so
    the remaining rows decode as they would alone."""
    tok, model, proc = tiny4()
    qs = ["What is it?", "Describe the picture in many more words than that, please.", "Count the dots."]
    ids, mask, images, singles = make_batch(tok, proc, qs, [4, 5, 6], side="left")
    cfg = cfg_dict(spec)
    out = model(ids, mask, images, reduction=cfg, use_cache=True, padding_side="left", last_logits_only=True)
    cache = out.cache
    nxt = out.logits[:, -1].argmax(-1)
    rows = torch.tensor([2, 0])
    cache.select_rows(rows)
    nxt = nxt[rows]
    got = [nxt]
    for _ in range(3):
        nxt = model(nxt[:, None], reduction=cfg, cache=cache).logits[:, -1].argmax(-1)
        got.append(nxt)
    got = torch.stack(got, 1)
    for r, b in enumerate(rows.tolist()):
        one = model.generate(singles[b][None], None, images[b:b + 1], reduction=cfg, max_new_tokens=4, eos_token_id=-1)
        assert got[r].tolist() == one[0].tolist()


@pytest.mark.parametrize("spec", [FASTV, PDROP], ids=["fastv", "pdrop"])
def test_text_only_row_in_the_batch(spec):
    """A row without an image keeps all its tokens and answers as alone; the image rows drop."""
    from helpers import random_image
    from llava_restore.model.conversation import build_prompt
    from llava_restore.model.mm_utils import pad_sequences, process_images, tokenizer_image_token

    tok, model, proc = tiny4()
    ids = [tokenizer_image_token(build_prompt("<image>\\nWhat is it?"), tok, return_tensors="pt"),
           tokenizer_image_token(build_prompt("Say something about circles."), tok, return_tensors="pt")]
    images = process_images([random_image(9)], proc, "pad")
    input_ids, mask = pad_sequences(ids, tok.pad_token_id, "left")
    cfg = cfg_dict(spec)
    out = model(input_ids, mask, images, reduction=cfg, padding_side="left")
    rep = out.prepared.inllm
    assert rep.visual_per_layer[1].tolist() == [0] * LAYERS
    assert rep.visual_per_layer[0].tolist() == rep.schedule.counts
    alone = [model(ids[0][None], None, images, reduction=cfg).logits[0, -1],
             model(ids[1][None], None, None, reduction=cfg).logits[0, -1]]
    torch.testing.assert_close(out.logits[:, -1], torch.stack(alone), rtol=1e-4, atol=1e-4)
