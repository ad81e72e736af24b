"""Our LLaVA against transformers' LlavaForConditionalGeneration (random tiny weights, fp32, CPU).

The weights are large enough for the comparison to see mistakes: LM and projector matrices
N(0, 0.2), embeddings N(0, 1), norm weights 1 + N(0, 0.2), biases N(0, 0.2).  (With norm weights
drawn N(0, 0.2) like the matrices, logits of scale ~1.5, the projector at transformers' 0.02 and
zero biases, a decode position off by one left all 20 greedy tokens unchanged and a dropped
projector bias was invisible.)  Each parity check also runs on deliberately wrong variants of
our model, which must fail it."""
import copy

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from llava_restore.constants import IMAGE_TOKEN_INDEX
from llava_restore.model.builder import load_pretrained_model, save_pretrained
from llava_restore.tools.make_tiny import build_tiny, image_processor_for
from llava_restore.tools.tokenizer import build_tokenizer

from helpers import one_thread  # noqa: F401  (fixture)
from helpers import (assert_distinguishes, assert_tokens_distinguish, forward_prepared, greedy_cached, make_batch,
                     randomize_vectors, swap_first_two)

pytestmark = pytest.mark.usefixtures("one_thread")

N_PATCH = 576


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """An HF Llava with random weights saved by transformers, and our model loaded from that folder."""
    torch.manual_seed(0)
    tok = build_tokenizer(vocab_size=300)
    vocab = len(tok) + 1
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          image_size=96, patch_size=4, projection_dim=32)
    tc = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=vocab, rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=vocab - 1, vision_feature_layer=-2,
                      vision_feature_select_strategy="default")
    hf = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "language_model" in name or "lm_head" in name or "multi_modal_projector" in name:
                if p.dim() == 1:  # norm weights around 1, biases around 0
                    p.normal_(1.0 if "norm" in name else 0.0, 0.2)
                else:
                    p.normal_(0, 1.0 if "embed" in name else 0.2)
    folder = tmp_path_factory.mktemp("hf_llava")
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    image_processor_for(96).save_pretrained(folder)
    tok2, ours, proc, _ = load_pretrained_model(str(folder), device="cpu", attn_implementation="eager")
    return hf, ours, tok2, proc, vocab - 1


def _hf_ids(ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Our ids (one -200 per image) -> HF ids (576 image tokens per image); 1-D."""
    out = []
    for t in ids.tolist():
        out.extend([image_token_id] * N_PATCH if t == IMAGE_TOKEN_INDEX else [t])
    return torch.tensor(out)


def _variant(model, edit):
    """A deep copy of ``model`` with ``edit`` applied (a deliberately wrong variant)."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        edit(m)
    return m


def _set_norm_eps(eps):
    from llava_restore.model.llama import RMSNorm

    def edit(m):
        for mod in m.model.modules():
            if isinstance(mod, RMSNorm):
                mod.eps = eps
    return edit


def _swap_layer0_norms(m):
    layer = m.model.layers[0]
    a, b = layer.input_layernorm.weight, layer.post_attention_layernorm.weight
    a_old = a.clone()
    a.copy_(b)
    b.copy_(a_old)


def _next_vision_layer(m):
    m.get_vision_tower().last_layer += 1  # mm_vision_select_layer -1 instead of -2


def test_logits_match_transformers(hf_pair):
    hf, ours, tok, proc, img_id = hf_pair
    _, _, images, seqs = make_batch(tok, proc, ["What is on the left of the red square?"], [1])
    ids = seqs[0][None]
    with torch.no_grad():
        ref = hf(input_ids=_hf_ids(seqs[0], img_id)[None], pixel_values=images).logits
        out = ours(ids, images=images)
        got, p = out.logits, out.prepared
        wrong = {
            "two visual tokens swapped": forward_prepared(ours, p, visual_order=swap_first_two),
            "image span one position late": forward_prepared(ours, p, positions=p.positions + p.visual.float()),
            "layer-0 norms swapped": _variant(ours, _swap_layer0_norms)(ids, images=images).logits,
            "vision feature layer -1": _variant(ours, _next_vision_layer)(ids, images=images).logits,
        }
        eps = _variant(ours, _set_norm_eps(1e-6))(ids, images=images).logits  # LLaMA-1's eps, not the config's 1e-5
    assert got.shape == ref.shape
    err = (got - ref).abs().max().item()
    print(f"parity max |Δlogit| = {err:.3e} (logit scale {ref.abs().max().item():.2f})")
    assert_distinguishes(ref, got, wrong, rtol=1e-5, atol=1e-5)
    # a subtle one: moves the logits by ~1e-4, about 10x the tolerance
    assert_distinguishes(ref, got, {"rms_norm_eps 1e-6": eps}, rtol=1e-5, atol=1e-5, min_factor=3)


def test_greedy_generation_matches_transformers(hf_pair):
    hf, ours, tok, proc, img_id = hf_pair
    _, _, images, seqs = make_batch(tok, proc, ["How many circles are there?"], [2])
    with torch.no_grad():
        hf_ids = _hf_ids(seqs[0], img_id)[None]
        ref = hf.generate(input_ids=hf_ids, pixel_values=images, max_new_tokens=20, do_sample=False,
                          eos_token_id=None, min_new_tokens=20)[0, hf_ids.shape[1]:]
        got = ours.generate(seqs[0][None], images=images, max_new_tokens=20, eos_token_id=-1)[0]
    assert ref.shape[0] == 20
    assert_tokens_distinguish(ref, got, {f"decode positions off by {k:+d}": greedy_cached(
        ours, seqs[0][None], None, images, None, 20, next_pos_offset=k)[0] for k in (1, -1)})


def test_liuhaotian_and_hf_formats_identical(tmp_path):
    tok, model, proc = build_tiny(seed=3, init_std=0.2)
    randomize_vectors(model, 0.2, seed=3)  # norms and biases (the tower's too) away from 1 and 0
    save_pretrained(model, str(tmp_path / "lh"), tokenizer=tok, image_processor=proc, fmt="liuhaotian")
    save_pretrained(model, str(tmp_path / "hf"), tokenizer=tok, image_processor=proc, fmt="hf")
    t1, m1, p1, _ = load_pretrained_model(str(tmp_path / "lh"), device="cpu")
    t2, m2, p2, _ = load_pretrained_model(str(tmp_path / "hf"), device="cpu")
    assert m2.config.source_format == "hf" and m1.config.source_format == "liuhaotian"
    ids, mask, images, _ = make_batch(t1, p1, ["Is there a cat?", "What colour is the big circle?"], [4, 5])
    _, _, images2, _ = make_batch(t2, p2, ["Is there a cat?", "What colour is the big circle?"], [4, 5])
    torch.testing.assert_close(images, images2, rtol=0, atol=0)
    with torch.no_grad():
        a = m1(ids, mask, images, padding_side="left").logits
        b = m2(ids, mask, images, padding_side="left").logits
        wrong = {name: _variant(m2, edit)(ids, mask, images, padding_side="left").logits
                 for name, edit in [("layer-0 norms swapped", _swap_layer0_norms),
                                    ("vision feature layer -1", _next_vision_layer),
                                    ("projector bias dropped", lambda m: m.model.mm_projector[0].bias.zero_())]}
    assert_distinguishes(a, b, wrong, rtol=0, atol=0)
