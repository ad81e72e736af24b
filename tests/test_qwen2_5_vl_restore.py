"""RESTORE on Qwen2.5-VL (M-RoPE): the distance term's hand-checked table, per-image reduction with N
from image_grid_thw, 3-D positions of kept / merged tokens and of the text after the image,
batching (three samples of different N and prompt lengths equal the three alone), KV-cache
decoding against recomputation, eager / sdpa / flex, n = N against the unreduced model, and the
bad-input errors."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_distinguishes, one_thread  # noqa: F401
from llava_restore.reduction.config import make_reduction_config
from llava_restore.reduction.distance import distance_bias, rope_decay
from llava_restore.reduction.mrope import mrope_decay, mrope_dense_bias, mrope_distance_bias
from qwen_helpers import SIZES, forward_prepared, image, left_pad, loaded, merged_counts, process, prompt_ids

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = dict(rtol=0.0, atol=1e-5)
QUESTIONS = ["What is shown?", "Describe the picture in a single word or phrase.", "Is it a cat? Answer yes or no."]


def restore_cfg(**kw):
    base = dict(method="divprune", keep_ratio=0.5, restore=True)
    base.update(kw)
    return make_reduction_config(**base)


# ------------------------------------------------------------------------------ distance term
def test_mrope_distance_hand_table():
    # head_dim 4: K = 2 frequencies, theta_k = 100^(-2k/4) = (1, 0.1); section (1, 1, 0): k0 -> t, k1 -> h
    sec, th = (1, 1, 0), 100.0
    cases = {(0, 0, 0): 1.0, (0, 1, 0): (1 + math.cos(0.1)) / 2, (2, 0, 5): (math.cos(2.0) + 1) / 2,
             (3, -4, 7): (math.cos(3.0) + math.cos(-0.4)) / 2}
    for d, want in cases.items():
        got = mrope_decay(torch.tensor([d], dtype=torch.float64), th, 4, sec).item()
        assert got == pytest.approx(want, abs=1e-15), d
    # the log term: exactly 0 at Δ = 0 (c = 2)
    assert mrope_distance_bias(torch.zeros(1, 3), th, 4, sec).item() == 0.0
    # all three axes moving together = the 1-D formula, for a real section and theta
    d = torch.arange(-40, 41, dtype=torch.float64)
    same = mrope_decay(d[:, None].expand(-1, 3), 1e6, 128, (16, 24, 24))
    torch.testing.assert_close(same, rope_decay(d, 1e6, 128), rtol=0, atol=1e-15)
    torch.testing.assert_close(mrope_distance_bias(d[:, None].expand(-1, 3), 1e6, 128, (16, 24, 24)),
                               distance_bias(d, 1e6, 128), rtol=0, atol=1e-6)
    # but not when they do not: (0, δ, 0) differs from (δ, δ, δ)
    assert not torch.allclose(mrope_decay(torch.tensor([[0.0, 5, 0]]), 1e6, 128, (16, 24, 24)),
                              rope_decay(torch.tensor([5.0]), 1e6, 128))


def test_mrope_dense_bias_tables_equal_direct_formula():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 30, (2, 7, 3), generator=g).float()
    k = torch.randint(0, 30, (2, 11, 3), generator=g).float()
    direct = mrope_distance_bias(q[:, :, None] - k[:, None], 10000.0, 16, (2, 3, 3), 2.0)
    torch.testing.assert_close(mrope_dense_bias(q, k, 10000.0, 16, (2, 3, 3), 2.0), direct, rtol=0, atol=1e-6)
    frac = q + 0.5  # position_rep=mean: the direct formula
    torch.testing.assert_close(mrope_dense_bias(frac, k, 10000.0, 16, (2, 3, 3)),
                               mrope_distance_bias(frac[:, :, None] - k[:, None], 10000.0, 16, (2, 3, 3)))


# ------------------------------------------------------------------------------ reduction
@pytest.mark.parametrize("method", ["divprune", "vispruner", "holov", "visionzip", "random", "uniform", "tome"])
@pytest.mark.parametrize("restore", [False, True])
def test_every_method_reduces_each_image_by_its_own_n(method, restore):
    tok, model, proc = loaded()
    images = process(proc, [image(i, s) for i, s in enumerate(SIZES)])
    N = merged_counts(images)  # [12, 30, 16]
    ids = prompt_ids(tok, "What is shown?", 3)[None]
    opts = ["visionzip_cls=false"] if method == "visionzip" else []
    cfg = make_reduction_config(opts, method=method, keep_ratio=0.3, restore=restore)
    out = model(ids, images=images, reduction=cfg)
    assert [r.n for r in out.prepared.reductions] == [max(1, int(0.3 * n)) for n in N] == [3, 9, 4]
    assert [r.source.shape[1] for r in out.prepared.reductions] == N
    assert int(out.prepared.visual.sum()) == 16
    assert torch.isfinite(out.logits).all()


def test_importance_signal_is_attention_received_per_image():
    """The CLS-free signal: per merged token, the head-mean attention its patches receive in the last
    block (mean over the queries of its image): it sums to 1/merge^2 per image (rows of softmax sum to 1)."""
    _, model, proc = loaded()
    images = process(proc, [image(i, s) for i, s in enumerate(SIZES)])
    cfg = make_reduction_config(method="holov", keep_ratio=0.5).resolve()
    toks = model.encode(images, cfg)
    for t, n in zip(toks, merged_counts(images)):
        assert t.importance.shape == (n,) and t.merger_in.shape[0] == n and t.keys.shape[0] == n
        assert float(t.importance.sum()) == pytest.approx(1 / 4, abs=1e-6)
        assert float(t.importance.std()) > 0


def test_bad_budgets_are_clear_errors():
    tok, model, proc = loaded()
    images = process(proc, [image(0, SIZES[1]), image(1, SIZES[0])])  # N = 30, 12
    ids = prompt_ids(tok, "Hi", 2)[None]
    with pytest.raises(ValueError, match=r"--n-vis 20 is larger than image 1 \(sample 0, image 1 of it\)'s N=12"):
        model(ids, images=images, reduction=make_reduction_config(method="divprune", n_vis=20))
    for r in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"keep_ratio=.* must be in \(0, 1\]"):
            make_reduction_config(method="divprune", keep_ratio=r)
    with pytest.raises(ValueError, match="'fastv' drops tokens inside the LLM.*pre-LLM method"):
        model(ids, images=images, reduction=make_reduction_config(method="fastv", keep_ratio=0.5))
    for n_vis, r in ((None, 0.25), (100, None), (None, None)):
        assert make_reduction_config(method="divprune", n_vis=n_vis, keep_ratio=r).budget(576) == (n_vis or
                                                                                               int(576 * (r or 1)))
    with pytest.raises(ValueError, match="no CLS token.*visionzip_cls=false"):
        model(ids, images=images, reduction=make_reduction_config(method="visionzip", keep_ratio=0.5))


# ------------------------------------------------------------------------------ positions
def test_restore_positions_keep_3d_ids_and_text_continues():
    tok, model, proc = loaded()
    images = process(proc, [image(0, SIZES[1]), image(1, SIZES[0])])
    ids = prompt_ids(tok, "What is shown?", 2)[None]
    full = model.prepare_multimodal(ids, images=images)
    prep = model.prepare_multimodal(ids, images=images, reduction=model._resolve(restore_cfg()))
    fv, pv = full.positions[0][full.visual[0]], prep.positions[0][prep.visual[0]]  # (sum N, 3), (sum n, 3)
    off_full, off_red = 0, 0
    for r, N in zip(prep.reductions, merged_counts(images)):
        for j in range(r.n):
            members = r.members(0, j)
            rep = members[(members.numel() - 1) // 2]  # the lower median member in raster order
            assert pv[off_red + j].tolist() == fv[off_full + rep].tolist()
        assert bool((r.sizes > 1).any())  # some tokens really are merged
        off_full, off_red = off_full + N, off_red + r.n
    # text tokens: identical positions to the unreduced sequence (before, between and after the images)
    torch.testing.assert_close(prep.positions[0][~prep.visual[0]], full.positions[0][~full.visual[0]], rtol=0, atol=0)
    assert torch.equal(prep.next_pos, full.next_pos)


@pytest.mark.parametrize("rep", ["first", "last", "mean"])
def test_position_rep_alternatives(rep):
    tok, model, proc = loaded()
    images = process(proc, [image(0, SIZES[1])])
    ids = prompt_ids(tok, "Hi", 1)[None]
    full = model.prepare_multimodal(ids, images=images)
    prep = model.prepare_multimodal(ids, images=images, reduction=model._resolve(restore_cfg(position_rep=rep)))
    fv, pv = full.positions[0][full.visual[0]], prep.positions[0][prep.visual[0]]
    r = prep.reductions[0]
    for j in range(r.n):
        m = r.members(0, j)
        want = {"first": fv[m[0]], "last": fv[m[-1]], "mean": fv[m].mean(0)}[rep]
        torch.testing.assert_close(pv[j], want, rtol=0, atol=1e-6)


def test_position_mode_is_retain_under_mrope():
    """reindex (the plain-pruning preset) also keeps the 3-D ids on Qwen2.5-VL: same sequence as retain."""
    tok, model, proc = loaded()
    images = process(proc, [image(0, SIZES[1])])
    ids = prompt_ids(tok, "Hi", 1)[None]
    preps = [model.prepare_multimodal(ids, images=images, reduction=model._resolve(
        make_reduction_config(method="holov", n_vis=9, position_mode=mode))) for mode in ("reindex", "retain")]
    assert torch.equal(preps[0].positions, preps[1].positions) and torch.equal(preps[0].embeds, preps[1].embeds)
    vis = preps[0].positions[0][preps[0].visual[0]]
    assert bool((vis[1:, 1] * 100 + vis[1:, 2] > vis[:-1, 1] * 100 + vis[:-1, 2]).all())  # raster order
    assert len({tuple(v) for v in vis[:, 1:].tolist()}) == 9


def test_n_equals_N_restore_off_equals_unreduced():
    tok, model, proc = loaded()
    images = process(proc, [image(0, SIZES[0]), image(1, SIZES[1])])
    ids = prompt_ids(tok, "What is shown?", 2)[None]
    ref = model(ids, images=images).logits
    for cfg in (make_reduction_config(method="divprune", keep_ratio=1.0),
                make_reduction_config(method="holov", keep_ratio=1.0)):
        out = model(ids, images=images, reduction=cfg)
        prep = out.prepared
        vis = prep.visual[0].nonzero(as_tuple=True)[0]
        wrong = prep.positions.clone()
        wrong[0, vis[3], 2] += 1  # one token's w id off by one
        assert_distinguishes(ref, out.logits, forward_prepared(model, prep, wrong, cfg), **TOL)


# ------------------------------------------------------------------------------ batching
def _batch(tok, proc):
    imgs = [image(i, s) for i, s in enumerate(SIZES)]  # N = 12, 30, 16
    seqs = [prompt_ids(tok, q, 1) for q in QUESTIONS]  # three prompt lengths
    assert len({s.shape[0] for s in seqs}) == 3
    return imgs, seqs


@pytest.mark.parametrize("restore", [False, True])
def test_batch_of_three_equals_each_alone(restore):
    tok, model, proc = loaded()
    imgs, seqs = _batch(tok, proc)
    cfg = make_reduction_config(method="divprune", keep_ratio=0.5, restore=restore)
    ids, mask = left_pad(seqs, tok.pad_token_id)
    out = model(ids, mask, process(proc, imgs), reduction=cfg, padding_side="left")
    prep = out.prepared
    for b in range(3):
        alone = model(seqs[b][None], images=process(proc, [imgs[b]]), reduction=cfg, padding_side="left")
        L = alone.logits.shape[1]
        good = out.logits[b:b + 1, -L:]
        # planted error: one merged token of this sample one rotary id off
        vis = prep.visual[b].nonzero(as_tuple=True)[0]
        wrong = prep.positions.clone()
        wrong[b, vis[len(vis) // 2], 1] += 1
        bad = forward_prepared(model, prep, wrong, cfg)[b:b + 1, -L:]
        assert_distinguishes(alone.logits, good, bad, **TOL)


@pytest.mark.parametrize("restore", [False, True])
def test_batched_generation_equals_alone(restore):
    tok, model, proc = loaded()
    imgs, seqs = _batch(tok, proc)
    cfg = make_reduction_config(method="holov", keep_ratio=0.5, restore=restore)
    ids, mask = left_pad(seqs, tok.pad_token_id)
    got = model.generate(ids, mask, process(proc, imgs), reduction=cfg, max_new_tokens=8, eos_token_id=-1)
    for b in range(3):
        alone = model.generate(seqs[b][None], images=process(proc, [imgs[b]]), reduction=cfg, max_new_tokens=8,
                               eos_token_id=-1)
        assert got[b].tolist() == alone[0].tolist()


# ------------------------------------------------------------------------------ decoding, backends
def test_kv_cache_decode_equals_recomputation_with_distance_in_decode():
    tok, model, proc = loaded()
    imgs, seqs = _batch(tok, proc)
    cfg = make_reduction_config(method="divprune", keep_ratio=0.5, restore=True, distance_in_decode=True)
    images = process(proc, imgs)
    ids, mask = left_pad(seqs, tok.pad_token_id)
    pre = model(ids, mask, images, reduction=cfg, use_cache=True, padding_side="left")
    nxt = pre.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    step = model(nxt, reduction=cfg, cache=pre.cache)
    full = model(torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt, dtype=torch.bool)], 1), images,
                 reduction=cfg, padding_side="left", text_tail=1)
    # a decode step without the distance term cannot match the recomputation, which has it everywhere
    pre2 = model(ids, mask, images, reduction=cfg, use_cache=True, padding_side="left")
    off = model(nxt, reduction=make_reduction_config(method="divprune", keep_ratio=0.5, restore=True), cache=pre2.cache)
    assert_distinguishes(full.logits[:, -1:], step.logits, off.logits, **TOL)
    cached = model.generate(ids, mask, images, reduction=cfg, max_new_tokens=10, eos_token_id=-1)
    recomputed = model.generate(ids, mask, images, reduction=cfg, max_new_tokens=10, eos_token_id=-1, use_cache=False)
    assert cached.tolist() == recomputed.tolist()


def test_backends_agree_with_restore():
    tok, model, proc = loaded()
    imgs, seqs = _batch(tok, proc)
    images = process(proc, imgs)
    ids, mask = left_pad(seqs, tok.pad_token_id)
    cfg = restore_cfg(attn_backend="eager")
    ref = model(ids, mask, images, reduction=cfg, padding_side="left")
    no_dist = forward_prepared(model, ref.prepared, reduction=restore_cfg(distance_term=False), backend="eager")
    for backend in ("sdpa", "flex"):
        out = model(ids, mask, images, reduction=cfg, padding_side="left", attn_backend=backend)
        valid = ref.prepared.valid[..., None]
        assert_distinguishes(ref.logits * valid, out.logits * valid, no_dist * valid, **TOL)


def test_importance_is_in_raster_order():
    """The signal read inside the tower (window order, then un-permuted) equals the definition computed
    in raster order: the last (full-attention) block's probabilities from its input put back in
    raster order and rotary ids from transformers' own position ids, which a wrong un-permutation
    of the windows would not match."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    _, model, proc = loaded()
    visual = model.visual
    images = process(proc, [image(1, SIZES[1])])  # 5 x 6 merged tokens: several 2 x 2 windows
    assert visual.config.depth - 1 in visual.config.fullatt_block_indexes
    seen = {}
    h = visual.blocks[-1].register_forward_pre_hook(lambda m, a, k: seen.update(x=a[0]), with_kwargs=True)
    with torch.no_grad():
        visual(images.pixel_values, grid_thw=images.grid_thw)
    h.remove()
    window_index, _ = get_vision_window_index(images.grid_thw, visual.spatial_merge_size, visual.window_size,
                                              visual.patch_size)
    assert not torch.equal(window_index, torch.arange(window_index.numel()))  # the windows do permute
    L, unit = seen["x"].shape[0], visual.spatial_merge_unit
    x = seen["x"].view(-1, unit, seen["x"].shape[-1])[torch.argsort(window_index)].reshape(L, -1)  # raster
    blk = visual.blocks[-1]
    pos = get_vision_position_ids(images.grid_thw, visual.spatial_merge_size)  # raster-order (h, w) ids
    cos, sin = visual.rotary_pos_emb(x, pos)
    q, k, _ = blk.attn.qkv(blk.norm1(x)).reshape(L, 3, blk.attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    probs = torch.softmax(q.transpose(0, 1) @ k.transpose(0, 1).transpose(-1, -2) * blk.attn.scaling, -1)  # (H, L, L)
    want = probs.mean(dim=(0, 1)).view(-1, unit).mean(-1)
    got = model.encode(images, make_reduction_config(method="holov", keep_ratio=0.5).resolve())[0].importance
    assert_distinguishes(want, got, {"window order": got[window_index]}, rtol=1e-5, atol=1e-7)


def test_importance_in_query_blocks_equals_one_block(monkeypatch):
    """The probabilities are recomputed a few query rows at a time (bounded memory at real sizes)."""
    import llava_restore.model.qwen2_5_vl as q

    _, model, proc = loaded()
    images = process(proc, [image(0, SIZES[1]), image(1, SIZES[0])])
    cfg = make_reduction_config(method="holov", keep_ratio=0.5).resolve()
    whole = [t.importance for t in model.encode(images, cfg)]
    monkeypatch.setattr(q, "PROBS_BLOCK", 3 * 2 * 120)  # 3 query rows per block for a 120-patch image, 2 heads
    blocks = [t.importance for t in model.encode(images, cfg)]
    for a, b in zip(whole, blocks):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)
