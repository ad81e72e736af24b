"""Image preprocessing and prompt tokenisation, LLaVA-1.5 semantics."""
from __future__ import annotations

import os
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError

from llava_restore.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


class ImageLoadError(ValueError):
    """A missing, truncated or undecodable image; the message names the file."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image fully (so truncation surfaces here) and convert it to RGB.

    RGBA, LA, P, L, I;16 and CMYK inputs are accepted.  Alpha is composited on white, as a viewer
    would show it (LLaVA's plain ``.convert('RGB')`` drops alpha onto black; we document this).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageLoadError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # forces full decode: truncated files raise here
            img = im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageLoadError(f"cannot read image {path}: {exc}") from exc
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if img.mode.startswith("I"):
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    return img.convert("RGB")


def expand2square(img: Image.Image, background_color: tuple[int, int, int]) -> Image.Image:
    """Pad the short side symmetrically (LLaVA's floor split) with the background colour."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background_color)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def process_images(images: Sequence[Image.Image], image_processor, image_aspect_ratio: str = "pad") -> torch.Tensor:
    """(B, 3, H, W) pixel values.  ``pad``: pad to square with the processor's mean colour first."""
    if image_aspect_ratio not in ("pad", "square", "resize", None):
        raise ValueError(f"image_aspect_ratio {image_aspect_ratio!r} not supported (pad|square)")
    if image_aspect_ratio == "pad":
        mean = tuple(int(x * 255) for x in image_processor.image_mean)
        images = [expand2square(to_rgb(im), mean) for im in images]
    else:
        images = [to_rgb(im) for im in images]
    return image_processor(images=list(images), return_tensors="pt")["pixel_values"]


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX, return_tensors=None):
    """Tokenise ``prompt`` with every "<image>" replaced by ``image_token_index``.

    Each text chunk is tokenised on its own (as LLaVA does); the BOS the tokenizer adds is kept
    once, at the very start.
    """
    chunks = [tokenizer(c).input_ids for c in prompt.split(DEFAULT_IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    ids: list[int] = []
    for i, chunk in enumerate(chunks):
        if bos is not None and chunk and chunk[0] == bos:
            chunk = chunk[1:] if (i > 0 or ids) else chunk
        if i > 0:
            ids.append(image_token_index)
        ids.extend(chunk)
    if return_tensors == "pt":
        return torch.tensor(ids, dtype=torch.long)
    if return_tensors is not None:
        raise ValueError(f"unsupported return_tensors {return_tensors!r}")
    return ids


class KeywordsStoppingCriteria:
    """Stop when every sequence ends with one of ``keywords`` (string match on the decoded tail)."""

    def __init__(self, keywords: Sequence[str], tokenizer):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer

    def done(self, new_tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B,) bool
        tails = self.tokenizer.batch_decode(new_tokens[:, -8:], skip_special_tokens=True)
        return torch.tensor([any(k in t for k in self.keywords) for t in tails])


def pad_sequences(seqs: Sequence[torch.Tensor], pad_id: int, side: str = "left",
                  multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors into (B, L) ids and a (B, L) bool mask, padding on ``side``; L is
    rounded up to ``multiple_of`` (fewer distinct shapes: GPU kernels plan once per shape)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side {side!r} not in ['left', 'right']")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
    L = max(s.shape[0] for s in seqs)
    L = -(-L // multiple_of) * multiple_of
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for b, s in enumerate(seqs):
        sl = slice(L - s.shape[0], L) if side == "left" else slice(0, s.shape[0])
        ids[b, sl], mask[b, sl] = s, True
    return ids, mask
