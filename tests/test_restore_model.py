"""RESTORE inside the decoder: identity, positions, batching, decoding, backends (tiny model, fp32)."""
import math

import pytest
import torch
import torch.nn.functional as F

from llava_restore.constants import IMAGE_TOKEN_INDEX
from llava_restore.reduction.config import make_reduction_config

from helpers import make_batch

QUESTIONS = ["What is it?", "What is left of the red square in the picture?", "How many blue circles are there?"]
SEEDS = [21, 22, 23]


def cfg(method="divprune", n=64, restore=True, **kw):
    return make_reduction_config(kw or None, method=method, n_vis=n, restore=restore)


def test_identity_when_n_equals_N_and_restore_off(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS)
    with torch.no_grad():
        full = model(ids, mask, images, padding_side="left").logits
        for method in ("divprune", "vispruner", "holov", "uniform", "random"):
            red = model(ids, mask, images, reduction=cfg(method, 576, restore=False), padding_side="left").logits
            torch.testing.assert_close(red, full, rtol=1e-6, atol=1e-6)


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
def test_batch_equals_singles(tiny_loaded, restore, method):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, seqs = make_batch(tok, proc, QUESTIONS, SEEDS)
    c = cfg(method, 64, restore)
    with torch.no_grad():
        batch = model(ids, mask, images, reduction=c, padding_side="left")
        kept = []
        for b in range(3):
            single = model(seqs[b][None], images=images[b:b + 1], reduction=c)
            torch.testing.assert_close(batch.logits[b][batch.prepared.valid[b]], single.logits[0], rtol=1e-5, atol=1e-5)
            kept.append(tuple(single.prepared.reductions[0].source[0].tolist()))
    assert len(set(kept)) == 3  # different images really keep different tokens
    gen_b = model.generate(ids, mask, images, reduction=c, max_new_tokens=6, eos_token_id=-1)
    for b in range(3):
        assert gen_b[b].tolist() == model.generate(seqs[b][None], images=images[b:b + 1], reduction=c,
                                                   max_new_tokens=6, eos_token_id=-1)[0].tolist()


def test_distance_in_decode_cache_equals_recompute(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS)
    c = cfg(n=64, distance_in_decode=True)
    a = model.generate(ids, mask, images, reduction=c, max_new_tokens=8, eos_token_id=-1, use_cache=True)
    b = model.generate(ids, mask, images, reduction=c, max_new_tokens=8, eos_token_id=-1, use_cache=False)
    assert a.tolist() == b.tolist()


def _rope(x, pos, theta):  # x (L, H, d), pos (L,)
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    ang = pos[:, None].double() * inv[None].double()  # (L, d/2)
    cos, sin = torch.cat([ang, ang], -1).cos().float()[:, None], torch.cat([ang, ang], -1).sin().float()[:, None]
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


def test_decode_step_matches_hand_reference(tiny_loaded):
    """Reference setting (distance_in_decode false): prefill rows carry the distance term, the
    decode query row carries only the size term."""
    tok, model, proc, _ = tiny_loaded
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
        ref = reference_forward(model, emb, pos, torch.cat([p.log_size[0], zero]), torch.cat([p.log_size_l0[0], zero]),
                                dist_rows=range(L))
    torch.testing.assert_close(pre.logits[0], ref[:L], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.logits[0, 0], ref[L], rtol=1e-5, atol=1e-5)
    # layer-0 uniform size really is N/n on visual keys
    vis = p.visual[0]
    assert torch.allclose(p.log_size_l0[0][vis], torch.full((16,), math.log(576 / 16)))


@pytest.mark.parametrize("opts", [{}, {"distance_scope": "visual_keys", "distance_in_decode": True}])
def test_backends_agree_in_model(tiny_loaded, opts):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, _ = make_batch(tok, proc, QUESTIONS, SEEDS)
    outs = {}
    for be in ("eager", "sdpa", "flex"):
        c = cfg(n=64, attn_backend=be, **opts)
        with torch.no_grad():
            pre = model(ids, mask, images, reduction=c, use_cache=True, padding_side="left")
            step = model(pre.logits[:, -1].argmax(-1, keepdim=True), reduction=c, cache=pre.cache)
        valid = pre.prepared.valid
        outs[be] = (pre.logits[valid], step.logits)
    for be in ("sdpa", "flex"):
        torch.testing.assert_close(outs[be][0], outs["eager"][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[be][1], outs["eager"][1], rtol=1e-5, atol=1e-5)


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
