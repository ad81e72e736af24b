"""The default configuration reproduces the reference implementations (issue 16).

Each ``ref_*`` below re-implements a reference algorithm from the logic of its official code
(RESTORE's ``tokenreduction/tore`` for DivPrune and HoloV, dvlab-research/VisionZip for VisionZip)
in its own per-sample, loop-and-list style, independently of the code under test; the tests
compare the library's default output with it on many seeds.  Every equivalence check is paired
with a deliberately perturbed variant (another order, another option) that must fail the same
check, and the end-to-end checks run a tiny model at init scale 0.5, where a different visual
token order moves the logits far beyond the tolerance.
"""
import argparse

import pytest
import torch

from llava_restore.constants import IMAGE_TOKEN_INDEX
from llava_restore.reduction import make_reduction_config, reduce_visual_tokens
from llava_restore.reduction.cli import add_reduction_args, reduction_config_from_args
from llava_restore.reduction.holov import holov_select

from helpers import make_batch
from test_restore_model import reference_forward

N, D, DV, DK, HEADS = 576, 16, 8, 4, 4
SEEDS = range(12)


# ----------------------------------------------------------------------------- references
def ref_divprune(x: torch.Tensor, k: int) -> list[int]:
    """RESTORE's DivPrune on one sample: x (N, D) -> picks, in pick order."""
    xn = x / x.norm(dim=1, keepdim=True)
    dist = 1.0 - xn @ xn.t()
    picks = []
    for i in range(k):
        if i == 0:
            scores = torch.topk(dist, 2, dim=0, largest=False).values[1, :]
        else:
            scores = dist[torch.tensor(picks)].min(dim=0).values
        picks.append(int(scores.argmax()))
    return picks


def ref_holov(x: torch.Tensor, a: torch.Tensor, k: int, num_chunks: int = 16, eps: float = 1e-6):
    """RESTORE's HoloV_with_Indices on one sample: x (N, D), a (N,) ->
    (kept, in emission order; dropped, ranked by a descending)."""
    n_tok = x.shape[0]
    base, rem = divmod(n_tok, num_chunks)
    chunks, start = [], 0
    for c in range(num_chunks):
        size = base + (1 if c < rem else 0)
        if size > 0:
            chunks.append(list(range(start, start + size)))
        start += size
    scores = []
    for idx in chunks:
        pa = a[idx]
        if len(idx) <= 1:
            scores.append(pa.mean())
            continue
        f = x[idx] / (x[idx].norm(dim=1, keepdim=True) + eps)
        S = (f @ f.t()) * (1 - torch.eye(len(idx)))
        mean = S.sum(1) / (len(idx) - 1)
        var = ((S - mean[:, None]) ** 2).sum(1) / (len(idx) - 1)  # the whole row
        pa1000 = pa * 1e3
        token = pa1000 + 0.09 * var * (pa1000.abs().mean() / (var.abs().mean() + eps))
        scores.append(token.mean())
    scores = torch.stack(scores)
    sizes = torch.tensor([len(c) for c in chunks])
    w = scores / (scores.sum() + eps)
    alloc = (w * k).floor().long()
    remaining = k - int(alloc.sum())
    if remaining > 0:
        for i in torch.topk(w, k=min(remaining, len(w))).indices[:remaining]:
            alloc[i] += 1
    for _ in range(k):
        alloc = torch.minimum(alloc, sizes)
        deficit = k - int(alloc.sum())
        if deficit <= 0:
            break
        room = alloc < sizes
        if not bool(room.any()):
            break
        vw = w.clone()
        vw[~room] = -float("inf")
        alloc[torch.topk(vw, k=min(deficit, int(room.sum()))).indices] += 1
    kept, dropped, dropped_a = [], [], []
    for idx, n_c in zip(chunks, alloc.tolist()):
        pa = a[idx]
        if n_c == len(idx):
            kept += idx
            continue
        top = torch.topk(pa, k=n_c).indices.tolist() if n_c else []
        kept += [idx[i] for i in top]
        rest = [i for i in range(len(idx)) if i not in top]
        dropped += [idx[i] for i in rest]
        dropped_a += [float(pa[i]) for i in rest]
    order = sorted(range(len(dropped)), key=lambda i: -dropped_a[i])
    return kept, [dropped[i] for i in order]


def ref_visionzip(hidden, attn_heads, keys, dominant: int, contextual: int, projector):
    """dvlab-research/VisionZip's tower forward + projector on a batch.

    hidden (B, 1+N, Dv): the selected layer's output (CLS first); attn_heads (B, H, 1+N): that
    layer's attention of the CLS query, per head; keys (B, 1+N, dk): its keys, mean over heads.
    ``dominant`` counts the CLS token (the official ``visionzip(model, dominant, contextual)``
    passes dominant - 1 patches to the tower).  -> (projected tokens (B, n, D), all_indices)."""
    B, L, Dv = hidden.shape
    n_dom = dominant - 1
    cls_sum = attn_heads[:, :, 1:].sum(dim=1)  # (B, N)
    top = cls_sum.topk(n_dom, dim=1).indices + 1
    all_idx = torch.cat([torch.zeros(B, 1, dtype=top.dtype), top], dim=1)
    mask = torch.ones(B, L, dtype=torch.bool).scatter_(1, all_idx, False)
    dom = hidden.masked_select(~mask.unsqueeze(-1)).view(B, n_dom + 1, Dv)  # CLS + patches, ascending
    m = keys[mask].view(B, L - n_dom - 1, keys.shape[-1])
    h = hidden.masked_select(mask.unsqueeze(-1)).view(B, L - n_dom - 1, Dv)
    m = m / m.norm(dim=-1, keepdim=True)
    R = m.shape[1]
    step = max(1, R // contextual)
    targets = torch.arange(0, R, step)[:contextual]
    others = ~torch.isin(torch.arange(R), targets)
    sim = torch.bmm(m[:, others], m[:, targets].transpose(1, 2))
    onehot = torch.zeros(B, int(others.sum()), contextual).scatter_(2, sim.argmax(dim=2).unsqueeze(-1), 1)
    counts = onehot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    ctx = h[:, targets] + torch.bmm(onehot.transpose(1, 2), h[:, others]) / counts
    return projector(torch.cat([dom, ctx], dim=1)), all_idx


# ----------------------------------------------------------------------------- inputs
def _inputs(seed: int, batch: int = 2, n_tokens: int = N):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, n_tokens, D, generator=g)
    vis = torch.randn(batch, n_tokens, DV, generator=g)
    attn = torch.rand(batch, n_tokens, generator=g).softmax(-1)
    return feats, vis, attn, g


def _run(feats, cls_attn=None, **cfg):
    return reduce_visual_tokens(feats, make_reduction_config(**cfg).resolve(), cls_attn=cls_attn)


# ----------------------------------------------------------------------------- DivPrune
@pytest.mark.parametrize("n", [8, 64])
def test_divprune_enters_in_pick_order(n):
    differs = 0
    for seed in SEEDS:
        feats, _, _, _ = _inputs(seed, batch=3)
        res = _run(feats, method="divprune", n_vis=n)
        pos = _run(feats, method="divprune", n_vis=n, token_order="position")
        for b in range(3):
            picks = ref_divprune(feats[b], n)
            assert torch.equal(res.features[b], feats[b, picks])
            assert res.positions[b].long().tolist() == picks  # patch index of each output, in pick order
            assert torch.equal(pos.features[b], feats[b, sorted(picks)])  # the option: by patch index
            differs += picks != sorted(picks)
    assert differs == 3 * len(SEEDS)  # pick order is never the sorted order here: the check can fail


# ----------------------------------------------------------------------------- HoloV
def _holov_inputs(seed: int, n_tokens: int = N):
    """Random inputs with a chunk of identical tokens (where the variance definition matters) and
    CLS attention boosted on three random chunks (so allocations overflow).  The attention values
    are distinct (reference ties resolve in an unspecified order; ours go to the lowest index)."""
    feats, _, _, g = _inputs(seed, n_tokens=n_tokens)
    size = max(1, n_tokens // 16)
    feats[0, size:2 * size] = feats[0, size]  # chunk 1 of sample 0: one token repeated
    score = torch.stack([torch.randperm(n_tokens, generator=g) + 1 for _ in range(2)]).double()  # distinct
    for b in range(2):
        for c in torch.randperm(n_tokens // size, generator=g)[:3].tolist():
            score[b, c * size:(c + 1) * size] += n_tokens * (1 + 4 * int(torch.randint(0, 4, (1,), generator=g)))
    return feats, (score / score.sum(-1, keepdim=True)).float()


@pytest.mark.parametrize("n_tokens,n", [(576, 16), (576, 64), (576, 192), (20, 7)])
def test_holov_matches_the_reference(n_tokens, n):
    for seed in SEEDS:
        feats, attn = _holov_inputs(seed, n_tokens)
        res = _run(feats, attn, method="holov", n_vis=n)
        dropped = holov_select(feats, attn, n)[1]  # the ranking Stage B receives
        for b in range(2):
            ref_kept, ref_dropped = ref_holov(feats[b], attn[b], n)
            assert res.positions[b].long().tolist() == ref_kept
            assert torch.equal(res.features[b], feats[b, ref_kept])
            assert dropped[b].tolist() == ref_dropped


@pytest.mark.parametrize("opts,n_tokens,n", [
    ({"token_order": "position"}, 576, 64),
    ({"holov_redistribute": "fill"}, 576, 192),
    ({"holov_single_token_scaled": True}, 20, 7),
    ({"holov_var_excludes_self": True}, 576, 64),
])
def test_holov_old_variants_differ_from_the_reference(opts, n_tokens, n):
    """Each option restores a former behaviour and fails the reference check on some seed."""
    differs = 0
    for seed in SEEDS:
        feats, attn = _holov_inputs(seed, n_tokens)
        got = _run(feats, attn, method="holov", n_vis=n, **opts)
        differs += got.positions[0].long().tolist() != ref_holov(feats[0], attn[0], n)[0]
    assert differs > 0


# ----------------------------------------------------------------------------- VisionZip
def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(DV, D), torch.nn.GELU(), torch.nn.Linear(D, D))


def _visionzip_inputs(seed: int, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, 1 + N, DV, generator=g)
    attn_heads = torch.rand(batch, HEADS, 1 + N, generator=g).softmax(-1)  # the CLS query's row
    keys = torch.randn(batch, 1 + N, DK, generator=g)
    return hidden, attn_heads, keys


@pytest.mark.parametrize("n,dominant,contextual", [(64, 54, 10), (128, 108, 20), (192, 162, 30)])
def test_visionzip_matches_the_official_code(n, dominant, contextual):
    for seed in SEEDS:
        hidden, attn_heads, keys = _visionzip_inputs(seed)
        proj = _mlp(seed)
        with torch.no_grad():
            ref, all_idx = ref_visionzip(hidden, attn_heads, keys, dominant, contextual, proj)
            vis = hidden[:, 1:]
            cfg = make_reduction_config(method="visionzip", n_vis=n).resolve()
            res = reduce_visual_tokens(proj(vis), cfg, vis_feats=vis, cls_attn=attn_heads[:, :, 1:].mean(1),
                                       vis_cls=hidden[:, 0], attn_keys=keys[:, 1:], projector=proj)
        torch.testing.assert_close(res.features, ref, rtol=1e-5, atol=1e-5)
        assert res.extra[:, 0].tolist() == [0, 0] and bool((res.extra[:, 1:] == -1).all())  # the CLS token
        dom = torch.sort(all_idx[:, 1:], dim=1).values - 1  # dominant patches, ascending
        assert res.positions[:, 1:dominant].long().tolist() == dom.tolist()
        assert res.sizes[:, :dominant].tolist() == [[1.0] * dominant] * 2
        assert res.sizes.sum(1).tolist() == [N + 1.0] * 2  # every patch + the CLS token
        # the contextual tokens' members: every patch that is neither CLS nor dominant
        assert bool((res.source >= dominant).sum(1).eq(N - dominant + 1).all())
        # a perturbed variant fails the same check: the contextual tokens' order reversed
        flipped = torch.cat([res.features[:, :dominant], res.features[:, dominant:].flip(1)], dim=1)
        assert not torch.allclose(flipped, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opts", [{"visionzip_cls": False}, {"visionzip_metric": "projected"},
                                  {"visionzip_merge": "mean"}, {"token_order": "position"}])
def test_visionzip_old_variants_differ_from_the_official_code(opts):
    hidden, attn_heads, keys = _visionzip_inputs(0)
    proj = _mlp(0)
    with torch.no_grad():
        ref, _ = ref_visionzip(hidden, attn_heads, keys, 54, 10, proj)
        vis = hidden[:, 1:]
        cfg = make_reduction_config(dict(opts), method="visionzip", n_vis=64).resolve()
        res = reduce_visual_tokens(proj(vis), cfg, vis_feats=vis, cls_attn=attn_heads[:, :, 1:].mean(1),
                                   vis_cls=hidden[:, 0], attn_keys=keys[:, 1:], projector=proj)
    assert res.features.shape == ref.shape
    assert not torch.allclose(res.features, ref, rtol=1e-3, atol=1e-3)


def test_visionzip_previous_behaviour_as_options():
    """visionzip_cls=false, visionzip_metric=projected, visionzip_merge=mean, token_order=position
    give back the former projected-space variant: dominant = top-54 patches by a, contextual =
    the mean of target + members of the projected features, ordered by position."""
    from llava_restore.reduction import visionzip_partition
    from llava_restore.reduction.positions import build_result

    feats, _, attn, _ = _inputs(3)
    old = dict(visionzip_cls=False, visionzip_metric="projected", visionzip_merge="mean", token_order="position")
    res = _run(feats, attn, method="visionzip", n_vis=64, **old)
    expected = build_result(feats, visionzip_partition(feats, attn, 64, 54 / 64), 64, "median")
    for f in ("features", "source", "sizes", "positions"):
        torch.testing.assert_close(getattr(res, f), getattr(expected, f))
    assert res.extra is None


# ----------------------------------------------------------------------------- order + RESTORE
@pytest.mark.parametrize("method", ["divprune", "holov", "visionzip", "vispruner"])
def test_restore_orders_by_position_whatever_token_order(method):
    feats, vis, attn, _ = _inputs(5)
    outs = [reduce_visual_tokens(feats, make_reduction_config(dict(token_order=o), method=method, n_vis=64,
                                                              restore=True).resolve(), vis_feats=vis, cls_attn=attn)
            for o in ("reference", "position")]
    for f in ("features", "source", "sizes", "positions"):
        assert torch.equal(getattr(outs[0], f), getattr(outs[1], f))
    assert bool((outs[0].positions[:, 1:] >= outs[0].positions[:, :-1]).all())
    assert outs[0].extra is None


def test_vispruner_reference_order_is_by_patch_index():
    # the reference keeps the selected tokens in index order (an index mask)
    feats, vis, attn, _ = _inputs(6)
    res = reduce_visual_tokens(feats, make_reduction_config(method="vispruner", n_vis=64).resolve(),
                               vis_feats=vis, cls_attn=attn)
    assert bool((res.positions[:, 1:] > res.positions[:, :-1]).all())


def test_cli_token_order_and_errors():
    ap = argparse.ArgumentParser()
    add_reduction_args(ap)
    cfg = reduction_config_from_args(ap.parse_args(["--reduction", "divprune", "--n-vis", "64",
                                                    "--reduction-opts", "token_order=position"]))
    assert cfg.token_order == "position" and cfg.reference_order is False
    cfg = reduction_config_from_args(ap.parse_args(["--reduction", "holov", "--n-vis", "64"]))
    assert cfg.token_order == "reference" and cfg.reference_order is True
    assert not cfg.holov_var_excludes_self and not cfg.holov_single_token_scaled and cfg.holov_redistribute == "reference"
    assert reduction_config_from_args(ap.parse_args(["--reduction", "holov", "--n-vis", "64", "--restore"])).reference_order is False
    for opt, valid in (("token_order=sorted", r"\['reference', 'position'\]"),
                       ("holov_redistribute=greedy", r"\['reference', 'fill'\]"),
                       ("visionzip_metric=values", r"\['keys', 'projected'\]"),
                       ("visionzip_merge=sum", r"\['reference', 'mean'\]")):
        with pytest.raises(ValueError, match=valid):
            reduction_config_from_args(ap.parse_args(["--reduction", "divprune", "--n-vis", "64", "--reduction-opts", opt]))


# ----------------------------------------------------------------------------- tiny model
INIT_STD = 0.5  # at LLaMA's 0.02 a different visual-token order moves the logits only ~3e-5
TOL = 1e-4


@pytest.fixture(scope="module")
def big_init():
    from llava_restore.tools.make_tiny import build_tiny

    tok, model, proc = build_tiny(seed=0, init_std=INIT_STD)
    return tok, model, proc


def _reference_logits(model, seq: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """Plain LLaMA (hand-written eager) on [prefix | visual | suffix] with contiguous positions."""
    p = int((seq == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    emb = model.model.embed_tokens
    x = torch.cat([emb(seq[:p]), visual, emb(seq[p + 1:])])  # (L, D)
    L = x.shape[0]
    zero = torch.zeros(L)
    return reference_forward(model, x, torch.arange(L, dtype=torch.float32), zero, zero, dist_rows=[])


def _visual_span(out, b: int = 0) -> torch.Tensor:
    p = out.prepared
    return p.embeds[b][p.valid[b] & p.visual[b]]


def test_model_visionzip_equals_the_official_pipeline(big_init):
    """The tiny model with plain VisionZip (defaults) equals the official code's pipeline run on
    transformers' own CLIP outputs (hidden states, eager attentions, the layer's key projection)."""
    tok, model, proc = big_init
    _, _, images, seqs = make_batch(tok, proc, ["What is left of the red square?"], [11])
    vm = model.get_vision_tower().vision_tower
    cfg = make_reduction_config(method="visionzip", n_vis=64)
    with torch.no_grad():
        vm.set_attn_implementation("eager")
        hf = vm(images, output_hidden_states=True, output_attentions=True)
        layer = vm.encoder.layers[-2]  # the layer whose output LLaVA uses (select_layer -2)
        k = layer.self_attn.k_proj(layer.layer_norm1(hf.hidden_states[-3]))  # that layer's keys
        keys = k.view(*k.shape[:2], layer.self_attn.num_heads, -1).mean(2)  # (1, 1+N, dk), mean over heads
        ref_vis, _ = ref_visionzip(hf.hidden_states[-2], hf.attentions[-2][:, :, 0], keys, 54, 10, model.model.mm_projector)
        out = model(seqs[0][None], images=images, reduction=cfg)
        ref = _reference_logits(model, seqs[0], ref_vis[0])
        # the perturbed variant: the same 64 tokens, ordered by position
        pos = model(seqs[0][None], images=images, reduction=make_reduction_config(["token_order=position"],
                                                                                   method="visionzip", n_vis=64))
    torch.testing.assert_close(_visual_span(out), ref_vis[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits[0], ref, rtol=TOL, atol=TOL)
    assert out.prepared.reductions[0].extra[0, 0].item() == 0  # the CLS token comes first
    assert (pos.logits[0] - ref).abs().max().item() > 100 * TOL


@pytest.mark.parametrize("method", ["divprune", "holov"])
def test_model_plain_pruning_enters_in_reference_order(big_init, method):
    """The LLM receives the kept tokens in the base method's own order, contiguous positions;
    logits equal a hand-written forward of that sequence, and the position-ordered variant
    (the former behaviour, token_order=position) fails the same tolerance."""
    tok, model, proc = big_init
    _, _, images, seqs = make_batch(tok, proc, ["What is it?", "How many blue circles are there?"], [21, 22])
    with torch.no_grad():
        vis, proj, attn = model.encode_images(images, want_cls_attn=True)
        for b in range(2):
            out = model(seqs[b][None], images=images[b:b + 1], reduction=make_reduction_config(method=method, n_vis=16))
            picks = ref_divprune(proj[b], 16) if method == "divprune" else ref_holov(proj[b], attn[b], 16)[0]
            torch.testing.assert_close(_visual_span(out), proj[b, picks], rtol=1e-6, atol=1e-6)
            assert out.prepared.positions[0].tolist() == [float(i) for i in range(out.prepared.positions.shape[1])]
            ref = _reference_logits(model, seqs[b], proj[b, picks])
            torch.testing.assert_close(out.logits[0], ref, rtol=TOL, atol=TOL)
            wrong = _reference_logits(model, seqs[b], proj[b, sorted(picks)])
            assert (wrong - ref).abs().max().item() > 100 * TOL
            pos = model(seqs[b][None], images=images[b:b + 1],
                        reduction=make_reduction_config(["token_order=position"], method=method, n_vis=16))
            torch.testing.assert_close(pos.logits[0], wrong, rtol=TOL, atol=TOL)


def test_model_visionzip_batch_equals_singles(big_init):
    tok, model, proc = big_init
    qs = ["What is it?", "What is left of the red square in the picture?", "How many blue circles are there?"]
    ids, mask, images, seqs = make_batch(tok, proc, qs, [31, 32, 33])
    cfg = make_reduction_config(method="visionzip", n_vis=64)
    with torch.no_grad():
        batch = model(ids, mask, images, reduction=cfg, padding_side="left")
        for b in range(3):
            single = model(seqs[b][None], images=images[b:b + 1], reduction=cfg)
            torch.testing.assert_close(batch.logits[b][batch.prepared.valid[b]], single.logits[0], rtol=TOL, atol=TOL)
    with pytest.raises(ValueError, match="position_mode=retain"):
        model(ids, mask, images, reduction=make_reduction_config(["position_mode=retain"], method="visionzip", n_vis=64),
              padding_side="left")
