"""A random tiny Qwen2.5-VL folder, offline: transformers' config and weights, a locally trained
BPE tokenizer with Qwen's special tokens and a chat template, and a PIL ``preprocessor_config.json``.

    python -m llava_restore.tools.make_tiny OUT --family qwen2_5_vl [--seed 0]

The folder loads in transformers 5.24 with ``AutoTokenizer``, ``AutoImageProcessor`` (the PIL
``Qwen2VLImageProcessorPil``) and ``Qwen2_5_VLForConditionalGeneration``; ``AutoProcessor``
also builds a video processor, which needs torchvision.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast, Qwen2VLImageProcessorPil

from llava_restore.tools.tokenizer import train_word_bpe

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
# Qwen's format: a default system turn, images as <|vision_start|><|image_pad|><|vision_end|>
# (one pad per image here; the processor / our model expands it to the image's N merged tokens)
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TEXT = (
    "You are a helpful assistant. system user assistant What is shown in the image? Describe the picture. "
    "Answer the question using a single word or phrase. Answer with the option's letter from the given "
    "choices directly. Yes No yes no 0 1 2 3 4 5 6 7 8 9 A B C D E F G H I J K L M N O P Q R S T U V W X Y Z "
    "a b c d e f g h i j k l m n o p q r s t u v w x y z . , ? ! : ; ' \" ( ) - \n"
)


@dataclass
class TinyQwenSpec:
    patch_size: int = 4
    merge_size: int = 2  # one LLM token = merge x merge patches
    temporal_patch_size: int = 2
    vision_hidden: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    window_size: int = 16  # pixels: 2 x 2 merged tokens per window
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab_size: int = 400
    rope_theta: float = 10000.0
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2 = 8
    min_pixels: int = 8 * 8 * 4  # >= 2 x 2 merged tokens
    max_pixels: int = 64 * 64  # <= 64 merged tokens


def build_qwen_tokenizer(vocab_size: int, texts=()) -> PreTrainedTokenizerFast:
    """BPE over a Metaspace pre-tokeniser with Qwen's special tokens first (ids 0..6), no BOS."""
    tok = train_word_bpe(_TEXT, texts, vocab_size, QWEN_SPECIALS, None)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=QWEN_SPECIALS[1:], model_max_length=4096,
                                   padding_side="left")
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def image_processor_for(spec: TinyQwenSpec) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(patch_size=spec.patch_size, merge_size=spec.merge_size,
                                    temporal_patch_size=spec.temporal_patch_size,
                                    min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)


def tiny_qwen_config(spec: TinyQwenSpec, tok: PreTrainedTokenizerFast):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(vocab_size=len(tok), hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                rms_norm_eps=1e-6, max_position_embeddings=4096, bos_token_id=ids["<|endoftext|>"],
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta,
                                 "mrope_section": list(spec.mrope_section)})
    vision = dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
                  num_heads=spec.vision_heads, patch_size=spec.patch_size, spatial_merge_size=spec.merge_size,
                  temporal_patch_size=spec.temporal_patch_size, window_size=spec.window_size,
                  out_hidden_size=spec.hidden, fullatt_block_indexes=[spec.vision_depth - 1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def tiny_qwen3_config(spec: TinyQwenSpec, tok: PreTrainedTokenizerFast):
    """Qwen3-VL at the same sizes: interleaved M-RoPE, q/k norms, DeepStack from every vision block but
    the last, a learned 8 x 8 position grid (``spec.mrope_section`` read as Qwen3's (t, h, w) sizes)."""
    from transformers import Qwen3VLConfig

    base = tiny_qwen_config(spec, tok).to_dict()
    text = {k: base["text_config"][k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                                 "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                                                 "max_position_embeddings", "bos_token_id", "eos_token_id",
                                                 "pad_token_id")}
    text.update(head_dim=spec.hidden // spec.heads,
                rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta,
                                 "mrope_section": list(spec.mrope_section), "mrope_interleaved": True})
    vision = dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
                  num_heads=spec.vision_heads, patch_size=spec.patch_size, spatial_merge_size=spec.merge_size,
                  temporal_patch_size=spec.temporal_patch_size, out_hidden_size=spec.hidden,
                  num_position_embeddings=64, deepstack_visual_indexes=list(range(spec.vision_depth - 1)))
    return Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=base["image_token_id"],
                         video_token_id=base["video_token_id"], vision_start_token_id=base["vision_start_token_id"],
                         vision_end_token_id=base["vision_end_token_id"], tie_word_embeddings=False)


def build_tiny_qwen(spec: TinyQwenSpec = TinyQwenSpec(), seed: int = 0, init_std: float = 0.02,
                    family: str = "qwen2_5_vl"):
    """(tokenizer, transformers Qwen2_5_VL- (or Qwen3VL-) ForConditionalGeneration, image processor),
    random: every matrix ~ N(0, init_std) (embeddings N(0, 1)); 1-D weights keep transformers' init."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    if family not in ("qwen2_5_vl", "qwen3_vl"):
        raise ValueError(f"unknown tiny Qwen family {family!r}; known: qwen2_5_vl, qwen3_vl")
    torch.manual_seed(seed)
    tok = build_qwen_tokenizer(spec.vocab_size)
    if family == "qwen3_vl":
        model = Qwen3VLForConditionalGeneration(tiny_qwen3_config(spec, tok))
    else:
        model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_config(spec, tok))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 1.0 if "embed_tokens" in name else init_std)
    return tok, model.eval(), image_processor_for(spec)


def save_tiny_qwen(out: str, seed: int = 0, spec: TinyQwenSpec = TinyQwenSpec(), init_std: float = 0.02,
                   family: str = "qwen2_5_vl"):
    tok, model, proc = build_tiny_qwen(spec, seed, init_std, family)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    proc.save_pretrained(out)
    return tok, model, proc
