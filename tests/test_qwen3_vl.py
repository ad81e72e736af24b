"""Qwen3-VL (the issue's stretch): our decoder with q/k norms, interleaved M-RoPE and DeepStack
against transformers' Qwen3VLForConditionalGeneration (random tiny weights, CPU, fp32), and RESTORE
on it: batching, KV cache, n = N, the interleaved distance term."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import assert_distinguishes, one_thread  # noqa: F401
from llava_restore.reduction.config import make_reduction_config
from llava_restore.reduction.distance import rope_decay
from llava_restore.reduction.mrope import mrope_decay, section_axes
from qwen_helpers import SIZES, forward_prepared, hf_reference, image, left_pad, loaded, merged_counts, process, prompt_ids

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = dict(rtol=0.0, atol=1e-5)
Q3 = "qwen3_vl"


def _hf_logits(ids, images):
    hf = hf_reference(Q3)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=images.pixel_values,
                  image_grid_thw=images.grid_thw, mm_token_type_ids=(ids == hf.config.image_token_id).int()).logits


@pytest.mark.parametrize("n_images", [1, 2])
def test_parity_with_transformers(n_images):
    tok, model, proc = loaded(Q3)
    assert type(model).__name__ == "Qwen3VLForRestore"
    images = process(proc, [image(i, SIZES[i]) for i in range(n_images)])
    ids = prompt_ids(tok, "What is shown in the image?", n_images, merged_counts(images))[None]
    ref = _hf_logits(ids, images)
    prep = model.prepare_multimodal(ids, images=images)
    one_id = prep.positions.clone()
    one_id[0, prep.visual[0].nonzero(as_tuple=True)[0][5], 1] += 1
    model.model.interleaved = False  # the Qwen2.5-VL (contiguous) frequency-to-axis map
    try:
        contiguous = forward_prepared(model, prep)
    finally:
        model.model.interleaved = True
    assert_distinguishes(ref, forward_prepared(model, prep), {
        "one rotary id": forward_prepared(model, prep, one_id), "no DeepStack": forward_prepared(model, prep, inject=None),
        "contiguous M-RoPE": contiguous}, **TOL)
    compact = prompt_ids(tok, "What is shown in the image?", n_images)[None]
    torch.testing.assert_close(model(compact, images=images).logits, ref, **TOL)


def test_greedy_20_tokens_match_transformers():
    tok, model, proc = loaded(Q3)
    images = process(proc, [image(0, SIZES[0]), image(1, SIZES[1])])
    ids = prompt_ids(tok, "Describe the picture.", 2, merged_counts(images))[None]
    seq = ids
    for _ in range(20):
        seq = torch.cat([seq, _hf_logits(seq, images)[:, -1].argmax(-1, keepdim=True)], 1)
    ref = seq[:, ids.shape[1]:]
    assert model.generate(ids, images=images, max_new_tokens=20, eos_token_id=-1).tolist() == ref.tolist()
    assert model.generate(ids, images=images, max_new_tokens=20, eos_token_id=-1, use_cache=False).tolist() == ref.tolist()


def test_interleaved_axes_and_distance():
    # head_dim 8: K = 4, section (2, 1, 1) interleaved -> axes (t, h, w, t)
    assert section_axes((2, 1, 1), 8, interleaved=True).tolist() == [0, 1, 2, 0]
    assert section_axes((24, 20, 20), 128, interleaved=True)[:7].tolist() == [0, 1, 2, 0, 1, 2, 0]
    th = [100.0 ** (-2 * k / 8) for k in range(4)]
    d = (3.0, -2.0, 5.0)
    want = (math.cos(3 * th[0]) + math.cos(-2 * th[1]) + math.cos(5 * th[2]) + math.cos(3 * th[3])) / 4
    got = mrope_decay(torch.tensor([d], dtype=torch.float64), 100.0, 8, (2, 1, 1), interleaved=True).item()
    assert got == pytest.approx(want, abs=1e-15)
    assert mrope_decay(torch.zeros(1, 3), 100.0, 8, (2, 1, 1), interleaved=True).item() == 1.0
    same = torch.arange(-30, 31, dtype=torch.float64)
    torch.testing.assert_close(mrope_decay(same[:, None].expand(-1, 3), 5e6, 128, (24, 20, 20), interleaved=True),
                               rope_decay(same, 5e6, 128), rtol=0, atol=1e-15)


@pytest.mark.parametrize("restore", [False, True])
def test_batch_of_three_equals_each_alone(restore):
    tok, model, proc = loaded(Q3)
    imgs = [image(i, s) for i, s in enumerate(SIZES)]
    seqs = [prompt_ids(tok, q, 1) for q in ("What is shown?", "Describe it in one word.", "Is it a cat? Yes or no.")]
    cfg = make_reduction_config(method="divprune", keep_ratio=0.5, restore=restore)
    ids, mask = left_pad(seqs, tok.pad_token_id)
    out = model(ids, mask, process(proc, imgs), reduction=cfg, padding_side="left")
    prep = out.prepared
    assert prep.inject is not None and len(prep.inject) == 1
    for b in range(3):
        alone = model(seqs[b][None], images=process(proc, [imgs[b]]), reduction=cfg, padding_side="left")
        L = alone.logits.shape[1]
        no_deep = forward_prepared(model, prep, reduction=cfg, inject=None)[b:b + 1, -L:]
        assert_distinguishes(alone.logits, out.logits[b:b + 1, -L:], no_deep, **TOL)


def test_kv_cache_equals_recomputation_and_n_equals_N():
    tok, model, proc = loaded(Q3)
    images = process(proc, [image(0, SIZES[1]), image(1, SIZES[0])])
    ids = prompt_ids(tok, "What is shown?", 2)[None]
    cfg = make_reduction_config(method="holov", keep_ratio=0.5, restore=True, distance_in_decode=True)
    assert (model.generate(ids, images=images, reduction=cfg, max_new_tokens=8, eos_token_id=-1).tolist()
            == model.generate(ids, images=images, reduction=cfg, max_new_tokens=8, eos_token_id=-1,
                              use_cache=False).tolist())
    ref = model(ids, images=images).logits
    full = model(ids, images=images, reduction=make_reduction_config(method="divprune", keep_ratio=1.0))
    wrong = full.prepared.positions.clone()
    wrong[0, full.prepared.visual[0].nonzero(as_tuple=True)[0][7], 2] += 1
    assert_distinguishes(ref, full.logits, forward_prepared(model, full.prepared, wrong), **TOL)


def test_make_tiny_qwen3_folder(tmp_path):
    from transformers import AutoImageProcessor, Qwen3VLForConditionalGeneration

    from llava_restore.tools.make_tiny import main

    main([str(tmp_path / "q3"), "--family", "qwen3_vl"])
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "q3")).__name__ == "Qwen2VLImageProcessorPil"
    Qwen3VLForConditionalGeneration.from_pretrained(tmp_path / "q3")
    from llava_restore.model.qwen2_5_vl import CHAT_TEMPLATE, default_conv_mode

    assert default_conv_mode(str(tmp_path / "q3")) == CHAT_TEMPLATE


@pytest.mark.parametrize("method", ["divprune", "vispruner", "holov", "visionzip", "random", "uniform", "tome"])
def test_every_method_runs_with_deepstack(method):
    tok, model, proc = loaded(Q3)
    images = process(proc, [image(i, s) for i, s in enumerate(SIZES)])
    ids = prompt_ids(tok, "What is shown?", 3)[None]
    opts = ["visionzip_cls=false"] if method == "visionzip" else []
    out = model(ids, images=images, reduction=make_reduction_config(opts, method=method, keep_ratio=0.3, restore=True))
    assert [r.n for r in out.prepared.reductions] == [3, 9, 4]
    deep = out.prepared.inject[0][0]  # (L, D): nonzero exactly on the 16 visual tokens
    assert torch.equal(deep.abs().sum(-1) > 0, out.prepared.visual[0])
    assert torch.isfinite(out.logits).all()
