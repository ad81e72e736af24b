"""Qwen2.5-VL: our loader + M-RoPE decoder against transformers' Qwen2_5_VLForConditionalGeneration
(random tiny weights, CPU, fp32): logits on one image and on two images of different sizes in one
prompt, 20 greedy tokens, make_tiny's folder, and the loader's bad-input errors."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from helpers import assert_distinguishes, one_thread  # noqa: F401
from qwen_helpers import (SIZES, forward_prepared, hf_reference, image, loaded, merged_counts, process, prompt_ids,
                          tiny_qwen_folder)

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = dict(rtol=0.0, atol=1e-5)


def _hf_logits(ids, images):
    hf = hf_reference()
    mm = (ids == hf.config.image_token_id).int()
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=images.pixel_values,
                  image_grid_thw=images.grid_thw, mm_token_type_ids=mm).logits


def _parity(n_images):
    tok, model, proc = loaded()
    images = process(proc, [image(i, SIZES[i]) for i in range(n_images)])
    counts = merged_counts(images)
    assert len(set(counts)) == n_images  # the images really differ in N
    ids = prompt_ids(tok, "What is shown in the image?", n_images, counts)[None]
    ref = _hf_logits(ids, images)
    prep = model.prepare_multimodal(ids, images=images)
    good = forward_prepared(model, prep)
    # planted errors: one visual token's h id off by one; the text after the image one position late
    vis = prep.visual[0].nonzero(as_tuple=True)[0]
    one_id = prep.positions.clone()
    one_id[0, vis[len(vis) // 2], 1] += 1
    late = prep.positions.clone()
    late[0, vis[-1] + 1:] += 1
    factors = assert_distinguishes(ref, good, {"one rotary id": forward_prepared(model, prep, one_id),
                                               "text after the image": forward_prepared(model, prep, late)}, **TOL)
    # the model's own forward (compact placeholders: one per image) gives the same logits
    compact = prompt_ids(tok, "What is shown in the image?", n_images)[None]
    torch.testing.assert_close(model(compact, images=images).logits, ref, **TOL)
    return (good - ref).abs().max().item(), factors


def test_parity_single_image():
    diff, _ = _parity(1)
    print(f"max |logit diff| single image: {diff:.3g}")


def test_parity_two_images_of_different_sizes():
    diff, _ = _parity(2)
    print(f"max |logit diff| two images: {diff:.3g}")


def test_greedy_20_tokens_match_transformers():
    tok, model, proc = loaded()
    hf = hf_reference()
    images = process(proc, [image(0, SIZES[0]), image(1, SIZES[1])])
    ids = prompt_ids(tok, "Describe the picture.", 2, merged_counts(images))[None]
    # greedy by definition on transformers' forward (its generate stops at the config's EOS, which
    # these random weights emit early; our generate runs past it with eos_token_id=-1)
    seq = ids
    for _ in range(20):
        nxt = _hf_logits(seq, images)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], 1)
    ref = seq[:, ids.shape[1]:]
    assert ref.shape[1] == 20
    ours = model.generate(ids, images=images, max_new_tokens=20, eos_token_id=-1)
    ours_recompute = model.generate(ids, images=images, max_new_tokens=20, eos_token_id=-1, use_cache=False)
    assert ours.tolist() == ref.tolist()
    assert ours_recompute.tolist() == ref.tolist()
    assert len(set(ref[0].tolist())) > 3  # not a degenerate repetition


def test_make_tiny_folder_loads_in_transformers(tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from llava_restore.tools.make_tiny import main

    out = str(tmp_path / "q")
    main([out, "--family", "qwen2_5_vl"])
    for f in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    tok = AutoTokenizer.from_pretrained(out)
    proc = AutoImageProcessor.from_pretrained(out)
    assert type(proc).__name__ == "Qwen2VLImageProcessorPil"
    for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id and len(tok.tokenize(t)) == 1, t
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                                   tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
                         "<|im_start|>assistant\n")
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    images = process(proc, [image(0, SIZES[0])])
    ids = prompt_ids(tok, "Hi", 1, merged_counts(images))[None]
    g = hf.generate(input_ids=ids, pixel_values=images.pixel_values, image_grid_thw=images.grid_thw,
                    mm_token_type_ids=(ids == hf.config.image_token_id).int(), max_new_tokens=3, do_sample=False)
    assert g.shape[1] == ids.shape[1] + 3 or g[0, -1] == hf.config.text_config.eos_token_id


def test_dynamic_resolution_gives_n_per_image():
    _, _, proc = loaded()
    images = process(proc, [image(i, s) for i, s in enumerate(SIZES)])
    assert images.grid_thw.tolist() == [[1, 6, 8], [1, 10, 12], [1, 8, 8]]
    assert merged_counts(images) == [12, 30, 16]
    big = process(proc, [image(0, (400, 300))])  # max_pixels caps it: <= 64 merged tokens
    assert merged_counts(big)[0] <= proc.size["longest_edge"] // (proc.patch_size * proc.merge_size) ** 2


def test_config_detection_is_by_fields_not_name(tmp_path):
    from llava_restore.model.builder import load_pretrained_model

    odd = tmp_path / "llava-v1.5-7b"  # a LLaVA-like name on a Qwen folder
    shutil.copytree(tiny_qwen_folder(), odd)
    _, model, _, _ = load_pretrained_model(str(odd), device="cpu")
    assert type(model).__name__ == "Qwen2_5_VLForRestore"


def test_folder_without_processor_is_a_clear_error(tmp_path):
    from llava_restore.model.builder import load_pretrained_model
    from llava_restore.model.config import CheckpointError

    bad = tmp_path / "q"
    shutil.copytree(tiny_qwen_folder(), bad)
    os.remove(bad / "preprocessor_config.json")
    with pytest.raises(CheckpointError, match="no preprocessor_config.json"):
        load_pretrained_model(str(bad), device="cpu")


def test_config_without_mrope_section_is_a_clear_error(tmp_path):
    from llava_restore.model.builder import load_pretrained_model
    from llava_restore.model.config import CheckpointError

    bad = tmp_path / "q"
    shutil.copytree(tiny_qwen_folder(), bad)
    conf = json.loads((bad / "config.json").read_text())
    del conf["text_config"]["rope_parameters"]["mrope_section"]
    (bad / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match="mrope_section"):
        load_pretrained_model(str(bad), device="cpu")


def test_placeholder_count_mismatch_names_the_image():
    tok, model, proc = loaded()
    images = process(proc, [image(0, SIZES[0])])
    ids = prompt_ids(tok, "Hi", 1, [5])[None]  # 5 placeholders for an image of N=12
    with pytest.raises(ValueError, match=r"image 0 \(sample 0.*5 placeholder tokens, expected 1 or its N=12"):
        model(ids, images=images)
    two = prompt_ids(tok, "Hi", 2)[None]
    with pytest.raises(ValueError, match="2 image placeholder runs.*1 images"):
        model(two, images=images)


def test_transformers_4x_config_layout_loads(tmp_path):
    """The hub's Qwen2.5-VL config.json (written by transformers 4.x): text fields at the top,
    rope_scaling {type: mrope, mrope_section}; same model, same logits."""
    from llava_restore.model.builder import load_pretrained_model

    old = tmp_path / "q4"
    shutil.copytree(tiny_qwen_folder(), old)
    conf = json.loads((old / "config.json").read_text())
    text = conf.pop("text_config")
    rope = text.pop("rope_parameters")
    conf.update({k: v for k, v in text.items() if k not in ("model_type", "layer_types")})
    conf.update(rope_theta=rope["rope_theta"], rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]})
    (old / "config.json").write_text(json.dumps(conf))
    _, model4, _, _ = load_pretrained_model(str(old), device="cpu")
    tok, model, proc = loaded()
    images = process(proc, [image(0, SIZES[0])])
    ids = prompt_ids(tok, "Hi", 1)[None]
    torch.testing.assert_close(model4(ids, images=images).logits, model(ids, images=images).logits, rtol=0, atol=0)


def test_in_memory_transformers_layout_maps_to_the_hub_layout():
    from safetensors.torch import load_file

    from llava_restore.model.qwen2_5_vl import hf_to_ours

    saved = set(load_file(os.path.join(tiny_qwen_folder(), "model.safetensors")))
    assert set(hf_to_ours(hf_reference().state_dict())) == saved
    assert set(loaded()[1].state_dict()) == saved


def test_parity_at_the_real_head_geometry(tmp_path):
    """Qwen2.5-VL-7B's head shapes on a 2 + 2-layer model: text head_dim 128 with mrope_section
    (16, 24, 24) and rope_theta 1e6, vision 1280-d / 16 heads, 14-px patches, 112-px windows (4 x 4
    merged tokens), two images of different N in one prompt."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from helpers import randomize_vectors
    from llava_restore.model.builder import load_pretrained_model
    from llava_restore.tools.tiny_qwen import TinyQwenSpec, build_qwen_tokenizer, image_processor_for, tiny_qwen_config

    spec = TinyQwenSpec(patch_size=14, vision_hidden=1280, vision_depth=2, vision_heads=16, window_size=112,
                        hidden=1024, layers=2, heads=8, kv_heads=2, intermediate=1024, rope_theta=1e6,
                        mrope_section=(16, 24, 24), min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    tok = build_qwen_tokenizer(spec.vocab_size)
    torch.manual_seed(0)
    hf = Qwen2_5_VLForConditionalGeneration(tiny_qwen_config(spec, tok)).eval()
    with torch.no_grad():  # matrices N(0, 0.2 * sqrt(64 / width)): the tiny model's sensitivity at this width
        for name, p in hf.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 1.0 if "embed_tokens" in name else 0.2 * (64 / p.shape[-1]) ** 0.5)
    randomize_vectors(hf, 0.2)
    hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    image_processor_for(spec).save_pretrained(tmp_path)
    _, model, proc, _ = load_pretrained_model(str(tmp_path), device="cpu")
    images = process(proc, [image(0, (300, 200)), image(1, (150, 260))])
    assert merged_counts(images) == [54, 45]
    ids = prompt_ids(tok, "What is shown?", 2, merged_counts(images))[None]
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=images.pixel_values, image_grid_thw=images.grid_thw,
                 mm_token_type_ids=(ids == hf.config.image_token_id).int()).logits
    prep = model.prepare_multimodal(ids, images=images)
    wrong = prep.positions.clone()
    wrong[0, prep.visual[0].nonzero(as_tuple=True)[0][60], 2] += 1  # one token of image 1: w id + 1
    assert_distinguishes(ref, forward_prepared(model, prep), forward_prepared(model, prep, wrong), **TOL)
    torch.testing.assert_close(model(ids, images=images).logits, ref, **TOL)


def test_chat_template_from_the_processor_file(tmp_path):
    """Hub folders may keep the chat template only in chat_template.json (the processor's file)."""
    from llava_restore.model.builder import load_pretrained_model
    from llava_restore.tools.tiny_qwen import QWEN_CHAT_TEMPLATE

    q = tmp_path / "q"
    shutil.copytree(tiny_qwen_folder(), q)
    os.remove(q / "chat_template.jinja")
    conf = json.loads((q / "tokenizer_config.json").read_text())
    conf.pop("chat_template", None)
    (q / "tokenizer_config.json").write_text(json.dumps(conf))
    assert not getattr(load_pretrained_model(str(q), device="cpu")[0], "chat_template", None)
    (q / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_CHAT_TEMPLATE}))
    assert load_pretrained_model(str(q), device="cpu")[0].chat_template == QWEN_CHAT_TEMPLATE
