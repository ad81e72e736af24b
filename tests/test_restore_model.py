"""RESTORE inside the decoder: identity, positions, batching, decoding, backends (tiny model, fp32).

The equivalence checks run on ``helpers.sensitive_tiny()`` (init std 0.2, random norm weights):
at make_tiny's default 0.02 a wrong token order or a decode position off by one moves the logits
by less than the tolerance and the greedy tokens not at all.  Next to each equivalence sits the
same check on deliberately wrong variants (``assert_distinguishes``), which must fail it."""
import math

import pytest
import torch
import torch.nn.functional as F

from llava_restore.constants import IMAGE_TOKEN_INDEX
from llava_restore.reduction.config import make_reduction_config

from helpers import one_thread  # noqa: F401  (fixture)
from helpers import (answer_rows, assert_distinguishes, assert_tokens_distinguish, forward_prepared, greedy_cached,
                     make_batch, sensitive_tiny, swap_first_two)

pytestmark = pytest.mark.usefixtures("one_thread")
QUESTIONS = ["What is it?", "What is left of the red square in the picture?", "How many blue circles are there?"]
SEEDS = [21, 22, 23]


def cfg(method="divprune", n=64, restore=True, **kw):
    return make_reduction_config(kw or None, method=method, n_vis=n, restore=restore)


def _by_position() -> dict:
    """Visual tokens ordered by patch index (spec §3: without RESTORE the default is the base
    method's own order, which at n = N is a permutation, e.g. DivPrune's pick order)."""
    from llava_restore.reduction.config import config_field_names

    return {"token_order": "position"} if "token_order" in config_field_names() else {}


def test_perturbation_harness_is_the_model():
    """The helpers that plant errors are, unperturbed, exactly the model's prefill and generate."""
    tok, model, proc = sensitive_tiny()
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS)
    for c in (None, cfg(n=64), cfg(n=64, restore=False)):
        with torch.no_grad():
            out = model(ids, mask, images, reduction=c, padding_side="left")
        backend = "sdpa" if c is None else c.attn_backend
        torch.testing.assert_close(forward_prepared(model, out.prepared, c, backend=backend), out.logits, rtol=0, atol=0)
        gen = model.generate(ids, mask, images, reduction=c, max_new_tokens=5, eos_token_id=-1)
        assert greedy_cached(model, ids, mask, images, c, 5).tolist() == gen.tolist()


def test_identity_when_n_equals_N_and_restore_off():
    tok, model, proc = sensitive_tiny()
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS)
    with torch.no_grad():
        out = model(ids, mask, images, padding_side="left")
        full, rows = out.logits, answer_rows(out.prepared)
        # the same tokens in another order (two visual tokens swapped): must fail, also on the answer rows
        swapped = forward_prepared(model, out.prepared, visual_order=swap_first_two, backend="sdpa")
        for method in ("divprune", "vispruner", "holov", "uniform", "random"):
            red = model(ids, mask, images, reduction=cfg(method, 576, restore=False, **_by_position()),
                        padding_side="left").logits
            torch.testing.assert_close(red, full, rtol=1e-6, atol=1e-6)
            assert_distinguishes(full[rows], red[rows], {"two visual tokens swapped": swapped[rows]}, rtol=1e-6, atol=1e-6)


def test_retained_positions_and_decode_position(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, seqs = make_batch(tok, proc, QUESTIONS, SEEDS)
    with torch.no_grad():
        out = model(ids, mask, images, reduction=cfg(n=64), padding_side="left")
    p = out.prepared
    for b, s in enumerate(seqs):
        P = int((s == IMAGE_TOKEN_INDEX).nonzero()[0, 0])  # prefix length, found from the ids
        S = s.shape[0] - P - 1
        pos = p.positions[b][p.valid[b]]
        vis = p.visual[b][p.valid[b]]
        assert vis.sum() == 64
        assert pos[:P].tolist() == list(range(P))  # prefix keeps its positions
        assert pos[~vis][P:].tolist() == list(range(P + 576, P + 576 + S))  # suffix starts at P + N
        vp = pos[vis]
        assert bool((vp[1:] >= vp[:-1]).all()) and vp.min() >= P and vp.max() < P + 576
        assert p.next_pos[b].item() == P + 576 + S  # decoding continues at unreduced positions
        # sizes: the merged tokens account for all N originals
        assert math.isclose(p.log_size[b][p.valid[b]][vis].exp().sum().item(), 576, rel_tol=1e-5)
    # reindex baseline: contiguous positions
    with torch.no_grad():
        base = model(ids, mask, images, reduction=cfg(n=64, restore=False), padding_side="left").prepared
    for b in range(3):
        pos = base.positions[b][base.valid[b]]
        assert pos.tolist() == list(range(pos.shape[0]))


@pytest.mark.parametrize("restore", [False, True])
@pytest.mark.parametrize("method", ["divprune", "holov"])
def test_batch_equals_singles(restore, method):
    tok, model, proc = sensitive_tiny()
    ids, mask, images, seqs = make_batch(tok, proc, QUESTIONS, SEEDS)
    c = cfg(method, 64, restore)
    with torch.no_grad():
        batch = model(ids, mask, images, reduction=c, padding_side="left")
        valid = batch.prepared.valid
        # a batch whose padding keys are not masked out
        leaky = forward_prepared(model, batch.prepared, c, key_valid=torch.ones_like(valid), backend=c.attn_backend)
        kept = []
        for b in range(3):
            single = model(seqs[b][None], images=images[b:b + 1], reduction=c)
            n_real = int(valid[b].sum())
            wrong = {"two visual tokens swapped": forward_prepared(model, single.prepared, c, visual_order=swap_first_two,
                                                                   backend=c.attn_backend)[0]}
            if n_real < valid.shape[1]:  # a padded row
                wrong["padding keys attended"] = leaky[b][valid[b]]
                wrong["rows read at the wrong padding side"] = batch.logits[b][:n_real]
            assert_distinguishes(single.logits[0], batch.logits[b][valid[b]], wrong, rtol=1e-5, atol=1e-5)
            kept.append(tuple(single.prepared.reductions[0].source[0].tolist()))
    assert len(set(kept)) == 3  # different images really keep different tokens
    gen_b = model.generate(ids, mask, images, reduction=c, max_new_tokens=6, eos_token_id=-1)
    singles = torch.cat([model.generate(seqs[b][None], images=images[b:b + 1], reduction=c, max_new_tokens=6,
                                        eos_token_id=-1) for b in range(3)])
    assert_tokens_distinguish(singles, gen_b, {"decode positions off by one": greedy_cached(
        model, ids, mask, images, c, 6, next_pos_offset=1)})


def test_distance_in_decode_cache_equals_recompute():
    tok, model, proc = sensitive_tiny()
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS)
    c = cfg(n=64, distance_in_decode=True)
    a = model.generate(ids, mask, images, reduction=c, max_new_tokens=8, eos_token_id=-1, use_cache=True)
    b = model.generate(ids, mask, images, reduction=c, max_new_tokens=8, eos_token_id=-1, use_cache=False)
    assert_tokens_distinguish(b, a, {
        "cached decode without the distance term": greedy_cached(model, ids, mask, images, c, 8,
                                                                 decode_reduction=cfg(n=64, distance_in_decode=False)),
        "cached decode positions off by one": greedy_cached(model, ids, mask, images, c, 8, next_pos_offset=1)})


def _rope(x, pos, theta):  # x (L, H, d), pos (L,)
    """Rotary embedding with the angles in fp32, as transformers' LlamaRotaryEmbedding computes
    them (fp32 inv_freq times fp32 positions); double angles differ from that by ~2e-5 in the
    logits at positions ~600 with init 0.2, more than the tolerance."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    ang = pos[:, None].float() * inv[None]  # (L, d/2)
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _decay(d, theta, hd):
    return sum(math.cos(d * theta ** (-2 * k / hd)) for k in range(hd // 2)) / (hd // 2)


def reference_forward(model, emb, pos, log_size, log_size_l0, dist_rows, c=2.0):
    """Hand-written eager LLaMA for one sample with RESTORE's terms built from spec §5.

    emb (L, D), pos (L,), log sizes (L,); dist_rows: the query rows that get the distance term.
    """
    t = model.config.text
    L = emb.shape[0]
    dist = torch.zeros(L, L)
    for i in dist_rows:
        for j in range(i + 1):
            dist[i, j] = math.log(c - _decay(pos[i].item() - pos[j].item(), t.rope_theta, t.head_dim))
    causal = torch.full((L, L), float("-inf")).triu(1)
    h = emb
    for li, layer in enumerate(model.model.layers):
        a = layer.self_attn
        x = layer.input_layernorm(h)
        q = _rope(a.q_proj(x).view(L, a.n_heads, a.head_dim), pos, t.rope_theta)
        k = _rope(a.k_proj(x).view(L, a.n_kv, a.head_dim), pos, t.rope_theta)
        v = a.v_proj(x).view(L, a.n_kv, a.head_dim)
        rep = a.n_heads // a.n_kv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        size = log_size_l0 if li == 0 else log_size
        outs = []
        for hh in range(a.n_heads):
            logits = q[:, hh] @ k[:, hh].T / math.sqrt(a.head_dim) + size[None, :] + dist + causal
            outs.append(torch.softmax(logits, -1) @ v[:, hh])
        h = h + a.o_proj(torch.stack(outs, 1).reshape(L, -1))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(model.model.norm(h))


def test_decode_step_matches_hand_reference():
    """Reference setting (distance_in_decode false): prefill rows carry the distance term, the
    decode query row carries only the size term.  The hand reference with one term dropped or
    misplaced, or positions reindexed / off by one, must miss the model by far."""
    tok, model, proc = sensitive_tiny()
    _, _, images, seqs = make_batch(tok, proc, QUESTIONS[1:2], SEEDS[1:2])
    c = cfg(n=16)
    with torch.no_grad():
        pre = model(seqs[0][None], images=images, reduction=c, use_cache=True)
        nxt = pre.logits[0, -1].argmax()[None, None]
        step = model(nxt, reduction=c, cache=pre.cache)
        p = pre.prepared
        L = p.embeds.shape[1]
        emb = torch.cat([p.embeds[0], model.model.embed_tokens(nxt[0])])
        pos = torch.cat([p.positions[0], p.next_pos[:1]])
        zero = torch.zeros(1)
        size, size0 = torch.cat([p.log_size[0], zero]), torch.cat([p.log_size_l0[0], zero])

        def ref_with(pos=pos, size=size, size0=size0, dist_rows=range(L)):
            return reference_forward(model, emb, pos, size, size0, dist_rows=dist_rows)

        ref = ref_with()
        prefill_wrong = {
            "no distance term": ref_with(dist_rows=()),
            "no size term": ref_with(size=torch.zeros(L + 1), size0=torch.zeros(L + 1)),
            "true sizes in layer 0": ref_with(size0=size),
            "reindexed positions": ref_with(pos=torch.arange(L + 1, dtype=torch.float32)),
        }
        step_wrong = {
            "distance term in decode": ref_with(dist_rows=range(L + 1)),
            "decode position off by one": ref_with(pos=pos + (torch.arange(L + 1) == L)),
            "no size term": ref_with(size=torch.zeros(L + 1), size0=torch.zeros(L + 1)),
        }
    assert_distinguishes(ref[:L], pre.logits[0], {k: v[:L] for k, v in prefill_wrong.items()}, rtol=1e-5, atol=1e-5)
    assert_distinguishes(ref[L], step.logits[0, 0], {k: v[L] for k, v in step_wrong.items()}, rtol=1e-5, atol=1e-5)
    # layer-0 uniform size really is N/n on visual keys
    vis = p.visual[0]
    assert torch.allclose(p.log_size_l0[0][vis], torch.full((16,), math.log(576 / 16)))


@pytest.mark.parametrize("opts", [{}, {"distance_scope": "visual_keys", "distance_in_decode": True}])
def test_backends_agree_in_model(opts):
    tok, model, proc = sensitive_tiny()
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS)

    def run(be, decode=None, **kw):
        """(prefill logits on real rows, one decode step); ``decode``: options that only the decode step uses."""
        c = cfg(n=64, attn_backend=be, **{**opts, **kw})
        with torch.no_grad():
            pre = model(ids, mask, images, reduction=c, use_cache=True, padding_side="left")
            dec = cfg(n=64, attn_backend=be, **{**opts, **kw, **(decode or {})})
            step = model(pre.logits[:, -1].argmax(-1, keepdim=True), reduction=dec, cache=pre.cache)
        return pre.logits[pre.prepared.valid], step.logits

    outs = {be: run(be) for be in ("eager", "sdpa", "flex")}
    # what a back-end that drops or misapplies one term would give (eager)
    pre_wrong = {"no size term": run("eager", size_term=False)[0], "no distance term": run("eager", distance_term=False)[0],
                 "true sizes in layer 0": run("eager", layer0_uniform_size=False)[0]}
    if opts.get("distance_scope") == "visual_keys":
        pre_wrong["distance term on all keys"] = run("eager", distance_scope="all")[0]
    in_decode = opts.get("distance_in_decode", False)
    step_wrong = {"no size term in decode": run("eager", decode={"size_term": False})[1],
                  f"distance term {'dropped from' if in_decode else 'added to'} decode":
                      run("eager", decode={"distance_in_decode": not in_decode})[1]}
    for be in ("sdpa", "flex"):
        assert_distinguishes(outs["eager"][0], outs[be][0], pre_wrong, rtol=1e-5, atol=1e-5)
        assert_distinguishes(outs["eager"][1], outs[be][1], step_wrong, rtol=1e-5, atol=1e-5)


def test_bad_reduction_inputs(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS[:1], SEEDS[:1])
    for bad, pat in [(cfg(n=577), "n_vis"), (cfg(method="nope"), "nope")]:
        with pytest.raises(ValueError, match=pat):
            model(ids, mask, images, reduction=bad, padding_side="left")
    with pytest.raises(ValueError, match="n_vis"):
        cfg(n=0)
    with pytest.raises(Exception, match="anchor_rulez"):
        make_reduction_config(["anchor_rulez=reference"])
