"""Random-weight LLaVA-1.5 models of the real shapes (no download), for timing and memory only.

``build_random_llava("llava-7b", device="cuda", dtype=torch.float16)`` builds LLaMA-7B text dims
(4096 hidden, 32 layers, 32 heads, 11008 MLP, 32000 vocab) behind a CLIP ViT-L/14-336 tower
(1024 hidden, 24 layers, 576 patches) and the mlp2x_gelu projector, directly on ``device``.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava_restore.model.config import LlavaConfig, TextConfig
from llava_restore.model.llava_llama import LlavaLlamaForCausalLM
from llava_restore.model.vision import CLIPVisionTower

CLIP_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768)
SHAPES = {
    "llava-7b": dict(text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                               num_key_value_heads=32, head_dim=128, vocab_size=32000, rms_norm_eps=1e-5),
                     vision=CLIP_L14_336),
    "llava-13b": dict(text=dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                                num_key_value_heads=40, head_dim=128, vocab_size=32000, rms_norm_eps=1e-5),
                      vision=CLIP_L14_336),
}


def _init_(model: nn.Module, seed: int) -> None:
    """LLaMA-style init (normal 0.02, norms 1, biases 0), generated on the parameters' device."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 or "class_embedding" in name:
                p.normal_(0.0, 0.02, generator=gen)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)


def build_random_llava(shape: str, device="cpu", dtype=torch.float32, layers: int | None = None,
                       vision_layers: int | None = None, seed: int = 0) -> LlavaLlamaForCausalLM:
    """A random-weight model of ``shape`` (``layers`` / ``vision_layers`` shrink it for smoke runs)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown --shape {shape!r}; known: {sorted(SHAPES)}")
    for name, count in (("layers", layers), ("vision_layers", vision_layers)):
        if count is not None and count < 1:  # 0 must not mean "the real count"
            raise ValueError(f"{name}={count}: give at least 1 (or leave it unset for the real count)")
    spec = SHAPES[shape]
    text = TextConfig(**{**spec["text"], **({"num_hidden_layers": layers} if layers else {})})
    vkw = {**spec["vision"], **({"num_hidden_layers": vision_layers} if vision_layers else {})}
    vcfg = CLIPVisionConfig(**vkw)
    cfg = LlavaConfig(text=text, mm_vision_tower=f"random:{shape}", mm_hidden_size=vcfg.hidden_size,
                      mm_projector_type="mlp2x_gelu", image_aspect_ratio="pad")
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            tower = CLIPVisionTower(CLIPVisionModel(vcfg), cfg.mm_vision_select_layer, cfg.mm_vision_select_feature)
            model = LlavaLlamaForCausalLM(cfg, tower)
    finally:
        torch.set_default_dtype(old)
    _init_(model, seed)
    return model.eval()
