"""Small shared test helpers (images, prompts, batches)."""
import numpy as np
import torch
from PIL import Image

from llava_restore.model.conversation import build_prompt
from llava_restore.model.mm_utils import pad_sequences, process_images, tokenizer_image_token


def random_image(seed: int, size=(96, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def make_batch(tok, proc, questions, seeds, side="left"):
    ids = [tokenizer_image_token(build_prompt("<image>\n" + q), tok, return_tensors="pt") for q in questions]
    images = process_images([random_image(s) for s in seeds], proc, "pad")
    input_ids, mask = pad_sequences(ids, tok.pad_token_id, side)
    return input_ids, mask, images, ids
