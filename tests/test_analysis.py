"""The FLOP formula (hand count, torch's FLOP counter), the attention-share recorder (rows sum
to 1, layer 0 recomputed by hand with and without RESTORE's terms) and the efficiency report.

The share recomputation runs on ``helpers.sensitive_tiny()`` (init 0.2): at 0.02 the attention is
near uniform, so the shares are mostly a count and wrong RoPE positions go unseen."""
import copy
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llava_restore.analysis.attention import attention_shares, query_groups, variant_config
from llava_restore.analysis.efficiency import make_variants, measure
from llava_restore.analysis.flops import LlamaDims, anchor_flops, kv_cache_bytes, llm_prefill_flops, vision_flops
from llava_restore.model.attention import AttnContext, attention
from llava_restore.model.llama import KVCache, apply_rope, rope_cos_sin
from llava_restore.tools.make_tiny import build_tiny

from helpers import make_batch, one_thread, sensitive_tiny  # noqa: F401  (one_thread: fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_llm_flops_hand_count():
    # D=8, F=16, H=2, Hkv=1, d=4, 2 layers, L=5 tokens; per layer:
    #   q 2*5*8*8=640, k+v 2*5*8*8=640, o 2*5*8*8=640, QK^T 2*2*25*4=400, PV 400, MLP 3*2*5*8*16=3840
    m = LlamaDims(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, head_dim=4)
    assert llm_prefill_flops(m, 5) == 2 * (640 + 640 + 640 + 400 + 400 + 3840) == 13120
    assert kv_cache_bytes(m, 5, 2) == 2 * 2 * 1 * 4 * 5 * 2  # (k, v) x layers x Hkv x d x L x bytes
    assert anchor_flops(10, 8) == 2 * 10 * 10 * 8


def _prepared(model, tok, proc, questions, seeds, cfg=None):
    ids, mask, images, _ = make_batch(tok, proc, questions, seeds)
    return model.prepare_multimodal(ids, mask, images, None, cfg, padding_side="left"), (ids, mask, images)


def test_llm_and_vision_flops_match_torch_flop_counter(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    prep, (_, _, images) = _prepared(model, tok, proc, ["What is this?"], [0])
    L = int(prep.valid.sum())
    meta = KVCache(key_valid=prep.valid, key_pos=prep.positions, key_visual=prep.visual)
    ctx = model._context(None, prep.positions, meta, decoding=False, backend="eager")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.model(prep.embeds, prep.positions, ctx, None)
    assert counter.get_total_flops() == llm_prefill_flops(LlamaDims.of(model.config.text), L)

    # a fresh tiny model whose CLIP uses eager attention (the counter does not see CPU SDPA kernels)
    _, fresh, _ = build_tiny(seed=1)
    fresh.get_vision_tower().vision_tower.set_attn_implementation("eager")
    tower = fresh.get_vision_tower()
    vc = tower.config
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fresh.encode_images(images)
    assert counter.get_total_flops() == vision_flops(vc.hidden_size, vc.intermediate_size, tower.last_layer + 1,
                                                     tower.num_patches, vc.patch_size, model.config.text.hidden_size)


def test_record_probs_needs_eager():
    ctx = AttnContext(key_valid=torch.ones(1, 3, dtype=torch.bool), query_pos=torch.arange(3.0)[None],
                      key_pos=torch.arange(3.0)[None], backend="sdpa", record_probs=lambda i, p: None)
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="record_probs needs the eager backend"):
        attention(q, q, q, ctx, 0)


@torch.no_grad()
def _layer0_shares_by_hand(model, prep, log_size=None, distance_c=None):
    """Layer-0 visual share of visual / text queries of sample 0, softmax and masks written out."""
    t = model.config.text
    layer = model.model.layers[0]
    a = layer.self_attn
    x = layer.input_layernorm(prep.embeds[:1])  # (1, L, D)
    L = x.shape[1]
    q = a.q_proj(x).view(1, L, a.n_heads, a.head_dim).transpose(1, 2)
    k = a.k_proj(x).view(1, L, a.n_kv, a.head_dim).transpose(1, 2).repeat_interleave(a.n_heads // a.n_kv, 1)
    cos, sin = rope_cos_sin(prep.positions[:1], t.head_dim, t.rope_theta, x.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    logits = (q @ k.transpose(-1, -2)).double() / math.sqrt(t.head_dim)  # (1, H, L, L)
    if log_size is not None:
        logits = logits + log_size[:1, None, None, :].double()
    if distance_c is not None:
        p = prep.positions[0].double()
        dist = p[:, None] - p[None, :]
        kk = torch.arange(t.head_dim // 2, dtype=torch.float64)
        theta = t.rope_theta ** (-2 * kk / t.head_dim)
        decay = torch.cos(dist[..., None] * theta).mean(-1)  # D(d) = mean_k cos(d theta_k)
        logits = logits + torch.log(distance_c - decay)
    valid = prep.valid[0]
    allowed = torch.tril(torch.ones(L, L, dtype=torch.bool)) & valid[None, :]
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)[0]  # (H, L, L)
    share = (probs * prep.visual[0].double()).sum(-1).mean(0)  # (L,)
    vq, tq = query_groups(prep.visual[:1], prep.valid[:1])
    return float(share[vq[0]].mean()), float(share[tq[0]].mean())


@pytest.mark.parametrize("variant", ["full", "reindex", "restore"])
def test_attention_rows_sum_to_one_and_layer0_by_hand(variant):
    tok, model, proc = sensitive_tiny()
    cfg = variant_config(variant, "divprune", 64, [])
    questions, seeds = ["What is this?", "Is there a red square left of the circle in the picture?"], [1, 2]
    ids, mask, images, _ = make_batch(tok, proc, questions, seeds)
    sh = attention_shares(model, ids, mask, images, cfg)
    assert sh.max_row_err < 1e-5
    n_layers = len(model.model.layers)
    vis = sh.visual_sum / sh.visual_n  # (layers, B) mean share per sample
    txt = sh.text_sum / sh.text_n
    assert vis.shape == (n_layers, 2) and bool(((vis >= 0) & (vis <= 1)).all() & ((txt >= 0) & (txt <= 1)).all())
    n_vis_expect = 576 if cfg is None else 64
    assert sh.visual_n.tolist() == [n_vis_expect, n_vis_expect]
    # text queries = the tokens after the image: each sample's suffix length
    prep = model.prepare_multimodal(ids, mask, images, None, cfg, padding_side="left")
    for b in range(2):
        last_vis = int(prep.visual[b].nonzero().max())
        assert sh.text_n[b] == prep.valid[b, last_vis + 1:].sum()
    # sample 0 is left-padded (shorter prompt): recompute its layer-0 shares by hand
    # and deliberately wrong recomputations, each of which must miss the recorded shares by > 10x the tolerance
    leaky, shifted = copy.copy(prep), copy.copy(prep)
    leaky.valid = torch.ones_like(prep.valid)  # padding keys attended
    shifted.positions = prep.positions + prep.visual.float()  # the visual tokens one RoPE position late
    if variant == "restore":
        log_n = torch.where(prep.visual, torch.full_like(prep.log_size, math.log(576 / 64)), torch.zeros_like(prep.log_size))
        hand = _layer0_shares_by_hand(model, prep, log_size=log_n, distance_c=2.0)  # layer 0: uniform N/n
        wrong = {"no distance term": _layer0_shares_by_hand(model, prep, log_size=log_n),
                 "true sizes in layer 0": _layer0_shares_by_hand(model, prep, log_size=prep.log_size, distance_c=2.0),
                 "no size term": _layer0_shares_by_hand(model, prep, distance_c=2.0)}
    else:
        hand = _layer0_shares_by_hand(model, prep)
        wrong = {"padding keys attended": _layer0_shares_by_hand(model, leaky),
                 "visual positions off by one": _layer0_shares_by_hand(model, shifted)}
    got = (float(vis[0, 0]), float(txt[0, 0]))
    assert got[0] == pytest.approx(hand[0], abs=1e-5)
    assert got[1] == pytest.approx(hand[1], abs=1e-5)
    misses = {name: max(abs(w[0] - got[0]), abs(w[1] - got[1])) / 1e-5 for name, w in wrong.items()}
    print("layer-0 shares, perturbed recomputations miss by (x tolerance):", misses)
    assert min(misses.values()) > 10, misses


def test_efficiency_rows_on_tiny_model(tiny_loaded):
    tok, model, proc, _ = tiny_loaded
    ids, mask, images, _ = make_batch(tok, proc, ["What is this?"], [3])
    variants = make_variants(["divprune"], [64], [False, True], [])
    rows = measure(model, ids, mask, images, variants, repeats=1, warmup=0)
    full, plain, rest = rows
    assert [r["name"] for r in rows] == ["full", "divprune-n64", "divprune-n64-restore"]
    assert full["speedup"] == 1.0 and full["flop_speedup_limit"] == 1.0
    assert full["seq_len"] - plain["seq_len"] == 576 - 64 and rest["seq_len"] == plain["seq_len"]
    for r in rows:
        assert r["kv_bytes_measured"] == r["kv_bytes_formula"] > 0
        assert r["prefill_ms"] > 0 and r["peak_bytes"] > 0
    D = model.config.text.hidden_size
    assert plain["anchor_flops"] == 0 and rest["anchor_flops"] == 2 * (576 - 32) ** 2 * D
    assert rest["anchor_ms"] > 0 and plain["anchor_ms"] == 0
    assert plain["llm_flop_speedup_limit"] == pytest.approx(full["llm_flops"] / plain["llm_flops"])


def test_paired_ratios_cancel_a_slow_phase():
    """The paired statistic divides each repeat's RESTORE time by the same repeat's plain time, so a
    machine-wide slow phase cancels; the ratio of the medians does not have to."""
    from llava_restore.analysis.efficiency import paired, reduction_vs_first, restore_vs_plain

    plain = [10.0, 10.0, 20.0, 20.0, 20.0]  # the machine halves its speed after two repeats
    restore = [11.0, 11.0, 22.0, 22.0, 22.0]  # always 1.10x the plain time of its own repeat
    assert paired(restore, plain)[0] == pytest.approx(1.10)
    base = {"n_vis": 64, "speedup": 1.0, "reduce_ms": 1.0}
    rows = [dict(base, name="full", method="full", restore=False, prefill_ms_all=plain, prefill_ms=20.0, reduce_ms_all=[]),
            dict(base, name="d", method="divprune", restore=False, prefill_ms_all=plain, prefill_ms=20.0,
                 reduce_ms_all=[1.0, 1.0, 2.0, 2.0, 2.0]),
            dict(base, name="d-r", method="divprune", restore=True, prefill_ms_all=restore, prefill_ms=22.0,
                 reduce_ms_all=[2.0, 2.0, 4.0, 4.0, 4.0]),
            dict(base, name="v", method="vispruner", restore=False, prefill_ms_all=plain, prefill_ms=20.0,
                 reduce_ms_all=[3.0, 3.0, 6.0, 6.0, 6.0], reduce_ms=6.0)]
    (r,) = restore_vs_plain(rows)
    assert r["restore_over_plain_paired"] == pytest.approx(1.10) and r["restore_over_plain_q1"] == pytest.approx(1.10)
    (v,) = reduction_vs_first(rows)
    assert (v["method"], v["reference"]) == ("vispruner", "divprune") and v["paired"] == pytest.approx(3.0)
    rows[1].update(select_ms_all=[1.0, 1.0, 2.0, 2.0, 2.0], select_ms=2.0)  # the selections alone: 2.5x
    rows[3].update(select_ms_all=[2.5, 2.5, 5.0, 5.0, 5.0], select_ms=5.0)
    (s,) = reduction_vs_first(rows, "select")
    assert s["paired"] == pytest.approx(2.5) and s["ratio_of_medians"] == pytest.approx(2.5)


def test_efficiency_on_random_weights_of_a_shape(monkeypatch, tmp_path):
    """``--shape`` (the GPU suite's 7B prefill table) end to end, on a registered shape small enough
    for a CPU: the random model builds in the asked dtype, every configuration runs, the rows carry
    the FLOP limits and RESTORE's anchor FLOPs, and the report is written."""
    from llava_restore.analysis import efficiency, random_model

    tiny = dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=4, head_dim=16, vocab_size=256, rms_norm_eps=1e-5),
                vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                            image_size=56, patch_size=7, projection_dim=32))
    monkeypatch.setitem(random_model.SHAPES, "tiny-test", tiny)
    model = random_model.build_random_llava("tiny-test", dtype=torch.bfloat16, layers=1, vision_layers=2)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.text.num_hidden_layers == 1 and model.get_vision_tower().num_patches == 64
    with pytest.raises(ValueError, match="unknown --shape 'llava-3b'; known: .*llava-7b"):
        random_model.build_random_llava("llava-3b")
    with pytest.raises(SystemExit, match=r"^error: --shape tiny-test: mm_vision_select_layer -2 out of range for 1 layers"):
        efficiency.main(["--shape", "tiny-test", "--vision-layers", "1", "--out", str(tmp_path)])
    for flag, name in (("--layers", "layers"), ("--vision-layers", "vision_layers")):  # 0 must not mean "all"
        with pytest.raises(SystemExit, match=rf"^error: --shape tiny-test: {name}=0: give at least 1"):
            efficiency.main(["--shape", "tiny-test", flag, "0", "--out", str(tmp_path)])
    out = efficiency.main(["--shape", "tiny-test", "--methods", "divprune,vispruner,holov", "--n-vis", "16",
                           "--repeats", "1", "--warmup", "0", "--device", "cpu", "--dtype", "bfloat16",
                           "--out", str(tmp_path)])
    names = [r["name"] for r in out["rows"]]
    assert names == ["full"] + [f"{m}-n16{s}" for m in ("divprune", "vispruner", "holov") for s in ("", "-restore")]
    N, D = model.get_vision_tower().num_patches, tiny["text"]["hidden_size"]  # 64 patches, width 64
    for r in out["rows"][1:]:
        assert r["seq_len"] == out["rows"][0]["seq_len"] - (N - 16)
        assert r["anchor_flops"] == (2 * (N - 8) ** 2 * D if r["restore"] else 0)
        assert r["flop_speedup_limit"] > 1 and r["prefill_ms"] > 0
    assert [r["method"] for r in out["restore_vs_plain"]] == ["divprune", "vispruner", "holov"]
    assert out["meta"]["dtype"] == "bfloat16" and "tiny-test" in out["meta"]["model"]
    assert (tmp_path / "efficiency.md").read_text().startswith("# Prefill efficiency: random weights, shape tiny-test")


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nosuch"], "unknown reduction method 'nosuch'; known:"),
    (["--n-vis", "6a"], "--n-vis '6a': expected comma-separated token counts"),
    (["--reduction-opts", "nosuch=1"], "Key 'nosuch' not in 'ReductionConfig'"),
])
def test_efficiency_bad_arguments_fail_in_one_line(argv, message):
    from llava_restore.analysis import efficiency

    with pytest.raises(SystemExit) as err:
        efficiency.main(["--shape", "llava-7b", *argv])  # rejected before any model is built
    assert message in str(err.value)
