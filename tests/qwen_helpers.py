"""Shared pieces of the Qwen2.5-VL tests: one random tiny folder at a sensitive init, images of
different sizes (so different N), Qwen-format prompts and a forward over prepared inputs with
planted position errors."""
from __future__ import annotations

import functools
import os
import tempfile

import numpy as np
import torch
from PIL import Image

from helpers import SENSITIVE_INIT_STD, randomize_vectors
from llava_restore.model.llama import KVCache
from llava_restore.model.qwen2_5_vl import QwenImages

# (width, height) -> Qwen's smart resize to multiples of 8 px -> (h, w) merged grids 3x4, 5x6, 4x4
SIZES = [(32, 24), (48, 40), (32, 32)]


@functools.lru_cache(maxsize=2)
def tiny_qwen_folder(family: str = "qwen2_5_vl") -> str:
    """A tiny Qwen2.5-VL (or Qwen3-VL) folder written by make_tiny's builder at init std 0.2 with random
    norm weights and biases (q/k/v biases included), so a wrong rotary id or token visibly moves the logits."""
    from llava_restore.tools.tiny_qwen import build_tiny_qwen

    tok, hf, proc = build_tiny_qwen(seed=0, init_std=SENSITIVE_INIT_STD, family=family)
    randomize_vectors(hf, SENSITIVE_INIT_STD, seed=0)
    out = tempfile.mkdtemp(prefix="tiny_qwen_")
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    proc.save_pretrained(out)
    return out


@functools.lru_cache(maxsize=2)
def loaded(family: str = "qwen2_5_vl"):
    from llava_restore.model.builder import load_pretrained_model

    tok, model, proc, _ = load_pretrained_model(tiny_qwen_folder(family), device="cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    return tok, model, proc


@functools.lru_cache(maxsize=2)
def hf_reference(family: str = "qwen2_5_vl"):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    cls = Qwen3VLForConditionalGeneration if family == "qwen3_vl" else Qwen2_5_VLForConditionalGeneration
    return cls.from_pretrained(tiny_qwen_folder(family), dtype=torch.float32).eval()


def image(seed: int, size) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def process(proc, imgs) -> QwenImages:
    out = proc(images=list(imgs), return_tensors="pt")
    return QwenImages(out["pixel_values"], out["image_grid_thw"])


def merged_counts(images: QwenImages, merge: int = 2) -> list[int]:
    return (images.grid_thw.prod(-1) // merge ** 2).tolist()


def prompt_ids(tok, question: str, n_images: int = 1, counts: list[int] | None = None, image_id: int | None = None):
    """Token ids of a Qwen chat prompt with ``n_images`` images: one placeholder per image, or
    ``counts[i]`` of them (the HF processor's expansion) when ``counts`` is given."""
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    ids = tok(text).input_ids
    if counts is None:
        return torch.tensor(ids)
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    out, i = [], 0
    for t in ids:
        if t == pad:
            out += [pad] * counts[i]
            i += 1
        else:
            out.append(t)
    return torch.tensor(out)


def left_pad(seqs, pad_id: int):
    L = max(s.shape[0] for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for b, s in enumerate(seqs):
        ids[b, L - s.shape[0]:], mask[b, L - s.shape[0]:] = s, True
    return ids, mask


@torch.no_grad()
def forward_prepared(model, prep, positions=None, reduction=None, backend=None, inject="prepared"):
    """Logits from prepared inputs, optionally with ``positions`` (B, L, 3) replaced (a planted error)
    or the DeepStack injection replaced (``inject=None``: none)."""
    positions = prep.positions if positions is None else positions
    meta = KVCache(key_valid=prep.valid, key_pos=positions, key_log_size=prep.log_size,
                   key_log_size_l0=prep.log_size_l0, key_visual=prep.visual, next_pos=prep.next_pos)
    red = model._resolve(reduction)
    ctx = model._context(red, positions, meta, decoding=False, backend=backend)
    inject = prep.inject if isinstance(inject, str) else inject
    return model.lm_head(model.model(prep.embeds, positions, ctx, None, inject=inject))


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
