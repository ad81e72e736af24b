"""Small shared test helpers (images, prompts, batches) and the tools that keep equivalence tests
honest: a tiny model at an init where deliberate errors are visible, a forward over prepared
inputs that can plant one error at a time, and assertions that a perturbed variant fails the
same tolerance the correct one passes.

Why: at ``make_tiny``'s default init (std 0.02) the visual tokens barely reach the text logits:
reversing the 576 visual tokens moves the answer logits by ~3e-5, a decode position off by one by
~5e-6, so a 1e-5 tolerance cannot see those bugs.  At ``SENSITIVE_INIT_STD`` = 0.2 (fp32) each of
them moves the logits by >= 1 while the logits stay finite and unsaturated (answer logits
|z| <= ~6, std ~1.5, mean top-1 probability ~0.12).
"""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
from PIL import Image

from llava_restore.model.conversation import build_prompt
from llava_restore.model.mm_utils import pad_sequences, process_images, tokenizer_image_token

# LLAVA_TEST_INIT_STD=0.02 reruns the equivalence tests at make_tiny's default init: their
# "the perturbed variant must fail" checks then fail, which is what they are there to show
SENSITIVE_INIT_STD = float(os.environ.get("LLAVA_TEST_INIT_STD", "0.2"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module (``from helpers import one_thread`` plus
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): on this shared 2-core machine two
    spinning threads are several times slower, and the numerics do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_image(seed: int, size=(96, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def make_batch(tok, proc, questions, seeds, side="left"):
    ids = [tokenizer_image_token(build_prompt("<image>\n" + q), tok, return_tensors="pt") for q in questions]
    images = process_images([random_image(s) for s in seeds], proc, "pad")
    input_ids, mask = pad_sequences(ids, tok.pad_token_id, side)
    return input_ids, mask, images, ids


@torch.no_grad()
def randomize_vectors(model, std: float = SENSITIVE_INIT_STD, seed: int = 0):
    """Every 1-D parameter (norm weights -> 1 + N(0, std), biases and the like -> N(0, std)), the
    vision tower's included: at their init (ones, zeros) a swapped or dropped norm or bias is
    invisible."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(noise + (1.0 if "norm" in name.rsplit(".", 2)[-2] and name.endswith("weight") else 0.0))
    return model


@functools.lru_cache(maxsize=4)
def sensitive_tiny(seed: int = 0, init_std: float = SENSITIVE_INIT_STD, layers: int | None = None):
    """(tok, model, proc): ``build_tiny`` at an init where token order, calibration terms,
    positions, padding and decode positions visibly move the logits and the greedy tokens, with
    random norm weights and biases (``randomize_vectors``).  Cached and shared across test modules:
    do not modify it.  ``layers``: decoder depth (default: ``TinySpec``'s)."""
    from llava_restore.tools.make_tiny import TinySpec, build_tiny

    spec = TinySpec() if layers is None else TinySpec(layers=layers)
    tok, model, proc = build_tiny(spec, seed=seed, init_std=init_std)
    randomize_vectors(model, init_std, seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return tok, model, proc


def answer_rows(prep) -> torch.Tensor:
    """(B, L) bool: the real (non-padding) rows after each sample's last visual token, i.e. the
    question and answer prompt, whose logits the answer is decoded from."""
    rows = prep.valid.clone()
    for b in range(rows.shape[0]):
        vis = prep.visual[b].nonzero(as_tuple=True)[0]
        if vis.numel():
            rows[b, : int(vis.max()) + 1] = False
    return rows


@torch.no_grad()
def forward_prepared(model, prep, reduction=None, *, visual_order=None, positions=None, key_valid=None,
                     log_size=None, log_size_l0=None, backend="eager"):
    """Prefill logits (B, L, V) of ``model`` on already prepared inputs, optionally with one planted
    error: ``visual_order(n) -> LongTensor`` permutes each sample's visual features among its visual
    slots (positions stay), ``positions`` / ``key_valid`` / ``log_size`` / ``log_size_l0`` replace
    the prepared ones.  With no override it is the model's own prefill (a test checks that)."""
    from llava_restore.model.llama import KVCache

    cfg = reduction.resolve() if reduction is not None else None
    emb = prep.embeds.clone()
    if visual_order is not None:
        for b in range(emb.shape[0]):
            idx = prep.visual[b].nonzero(as_tuple=True)[0]
            emb[b, idx] = emb[b, idx[visual_order(idx.numel())]]
    pos = prep.positions if positions is None else positions
    meta = KVCache(key_valid=prep.valid if key_valid is None else key_valid, key_pos=pos, key_visual=prep.visual,
                   key_log_size=prep.log_size if log_size is None else log_size,
                   key_log_size_l0=prep.log_size_l0 if log_size_l0 is None else log_size_l0, next_pos=prep.next_pos)
    ctx = model._context(cfg, pos, meta, decoding=False, backend=backend)
    return model.lm_head(model.model(emb, pos, ctx, None))


def swap_first_two(n: int) -> torch.Tensor:
    """The smallest token-order error: the first two visual tokens trade places."""
    idx = torch.arange(n)
    idx[:2] = torch.tensor([1, 0])
    return idx


def _excess(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> float:
    """max |actual - expected| / (atol + rtol |expected|): <= 1 passes torch.testing.assert_close."""
    a, e = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    if a.shape != e.shape:
        return float("inf")
    if atol == 0 and rtol == 0:  # exact comparison: any difference is an infinite excess
        return 0.0 if torch.equal(a, e) else float("inf")
    return float(((a - e).abs() / (atol + rtol * e.abs())).max())


def assert_distinguishes(reference, good, bad, *, rtol: float, atol: float, min_factor: float = 10.0):
    """``good`` matches ``reference`` within (rtol, atol), and every perturbed variant in ``bad``
    (a tensor, or a dict name -> tensor) misses it by at least ``min_factor`` times the tolerance,
    so the equivalence check would really catch that error.  Returns {name: factor}."""
    torch.testing.assert_close(good, reference, rtol=rtol, atol=atol)
    bad = bad if isinstance(bad, dict) else {"perturbed": bad}
    factors = {name: _excess(b, reference, rtol, atol) for name, b in bad.items()}
    print(f"good {_excess(good, reference, rtol, atol):.3g} x tolerance; perturbed:",
          ", ".join(f"{k} {v:.3g}" for k, v in factors.items()))  # shown with pytest -s
    blind = {name: f for name, f in factors.items() if f < min_factor}
    assert not blind, (f"the tolerance (rtol={rtol}, atol={atol}) cannot see these perturbations: "
                       f"{ {k: round(v, 2) for k, v in blind.items()} } x tolerance (need >= {min_factor})")
    return factors


def assert_tokens_distinguish(reference, good, bad):
    """Token-equality version: ``good`` equals ``reference`` and every variant in ``bad`` (a
    tensor or a dict name -> tensor) differs from it somewhere."""
    ref = torch.as_tensor(reference).tolist()
    assert torch.as_tensor(good).tolist() == ref
    bad = bad if isinstance(bad, dict) else {"perturbed": bad}
    ref_t = torch.as_tensor(reference)
    print("perturbed decodes, tokens that differ:",
          ", ".join(f"{k} {int((torch.as_tensor(b) != ref_t).sum())}/{ref_t.numel()}" for k, b in bad.items()))
    same = [name for name, b in bad.items() if torch.as_tensor(b).tolist() == ref]
    assert not same, f"these perturbed decodes give the same tokens, so the comparison cannot see them: {same}"


@torch.no_grad()
def greedy_cached(model, input_ids, attention_mask, images, reduction=None, max_new_tokens=8,
                  next_pos_offset=0, decode_reduction="same"):
    """Greedy decoding with the KV cache written out step by step (no EOS), optionally with a planted
    error: ``next_pos_offset`` shifts every decode position, ``decode_reduction`` (when not "same")
    is the ReductionConfig the decode steps use instead of ``reduction``.  Unperturbed it is
    ``model.generate(..., eos_token_id=-1)``."""
    dec = reduction if decode_reduction == "same" else decode_reduction
    out = model(input_ids, attention_mask, images, reduction=reduction, use_cache=True, padding_side="left",
                last_logits_only=True)
    cache = out.cache
    cache.next_pos = cache.next_pos + next_pos_offset
    tokens = []
    for step in range(max_new_tokens):
        nxt = out.logits[:, -1].float().argmax(-1)
        tokens.append(nxt)
        if step == max_new_tokens - 1:
            break
        out = model(nxt[:, None], reduction=dec, cache=cache)
    return torch.stack(tokens, 1)


def retained_to_reindexed(prep) -> torch.Tensor:
    """(B, L) positions 0, 1, 2, ... over each row's real tokens: what a reduction that reindexes
    instead of retaining the original positions would give the same tokens."""
    return ((prep.valid.cumsum(1) - 1) * prep.valid).float()


def cached_greedy(model, ids, mask, images, cfg, steps: int, plant: bool = False):
    """Greedy decoding of one prompt through the KV cache -> (tokens, logits (steps, V)).
    ``plant``: shift every in-LLM stage's positions by 3 (a wrong cache the tests must catch)."""
    out = model(ids, mask, images, reduction=cfg, use_cache=True, padding_side="left")
    cache, toks, logits = out.cache, [], [out.logits[0, -1]]
    if plant:
        for st in cache.stages:
            st.pos_shift = st.pos_shift + 3.0
    for _ in range(steps):
        nxt = logits[-1].argmax()[None]
        toks.append(int(nxt))
        out = model(nxt[:, None], reduction=cfg, cache=cache)
        logits.append(out.logits[0, -1])
    return toks, torch.stack(logits[1:])
