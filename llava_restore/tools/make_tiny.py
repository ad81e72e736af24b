"""Write a random tiny LLaVA checkpoint with a locally built tokenizer (no hub).

    python -m llava_restore.tools.make_tiny OUT --format liuhaotian|hf [--seed 0]
    python -m llava_restore.tools.make_tiny OUT --family qwen2_5_vl|qwen3_vl [--seed 0]   (tools/tiny_qwen.py)

The tower is saved in the ``vision_model.``-prefixed layout transformers 4.3x also reads
(liuhaotian: ``OUT/vision_tower`` by ``checkpoint.save_vision_tower``; hf: ``vision_tower.vision_model.*``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from llava_restore.model.builder import save_pretrained
from llava_restore.model.config import LlavaConfig, TextConfig
from llava_restore.model.llava_llama import LlavaLlamaForCausalLM
from llava_restore.model.vision import CLIPVisionTower
from llava_restore.tools.tokenizer import build_tokenizer


@dataclass
class TinySpec:
    image_size: int = 96
    patch_size: int = 4  # 24 x 24 = 576 patches, LLaVA-1.5's token geometry
    vision_hidden: int = 32
    vision_layers: int = 3
    vision_heads: int = 4
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vocab_size: int = 320
    rope_theta: float = 10000.0


def image_processor_for(size: int) -> CLIPImageProcessorPil:
    """CLIP preprocessing (resize shortest edge, centre crop, OpenAI mean/std) at ``size``."""
    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              do_resize=True, do_center_crop=True, do_normalize=True, do_convert_rgb=True)


def build_tiny(spec: TinySpec = TinySpec(), seed: int = 0, tokenizer_texts=(), init_std: float = 0.02):
    """Random tiny LLaVA: projector/decoder matrices ~ N(0, init_std) (LLaMA's 0.02 by default),
    token embeddings ~ N(0, 1)."""
    torch.manual_seed(seed)
    tok = build_tokenizer(tokenizer_texts, vocab_size=spec.vocab_size - 1)
    vocab = len(tok) + 1  # one spare row, used as "<image>" by the llava-hf export
    vcfg = CLIPVisionConfig(hidden_size=spec.vision_hidden, intermediate_size=4 * spec.vision_hidden,
                            num_hidden_layers=spec.vision_layers, num_attention_heads=spec.vision_heads,
                            image_size=spec.image_size, patch_size=spec.patch_size, projection_dim=spec.vision_hidden)
    text = TextConfig(hidden_size=spec.hidden, intermediate_size=spec.intermediate, num_hidden_layers=spec.layers,
                      num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads, head_dim=spec.hidden // spec.heads,
                      vocab_size=vocab, rms_norm_eps=1e-6, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, max_position_embeddings=2048, rope_theta=spec.rope_theta)
    cfg = LlavaConfig(text=text, mm_vision_tower="vision_tower", mm_hidden_size=spec.vision_hidden,
                      mm_projector_type="mlp2x_gelu", image_aspect_ratio="pad", image_token_index=vocab - 1)
    tower = CLIPVisionTower(CLIPVisionModel(vcfg), cfg.mm_vision_select_layer, cfg.mm_vision_select_feature)
    model = LlavaLlamaForCausalLM(cfg, tower)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("model.vision_tower") and p.dim() > 1:
                p.normal_(0.0, init_std if "embed" not in name else 1.0)
    return tok, model.eval(), image_processor_for(spec.image_size)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--format", choices=["liuhaotian", "hf"], default="liuhaotian")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--family", choices=["llava", "qwen2_5_vl", "qwen3_vl"], default="llava",
                    help="qwen2_5_vl / qwen3_vl: a transformers Qwen2.5-VL / Qwen3-VL folder (--format does not apply)")
    args = ap.parse_args(argv)
    if args.family != "llava":
        from llava_restore.tools.tiny_qwen import save_tiny_qwen

        save_tiny_qwen(args.out, seed=args.seed, family=args.family)
        print(f"wrote tiny {args.family} checkpoint to {args.out}")
        return
    tok, model, proc = build_tiny(seed=args.seed)
    save_pretrained(model, args.out, tokenizer=tok, image_processor=proc, fmt=args.format)
    print(f"wrote tiny {args.format} checkpoint to {args.out}")


if __name__ == "__main__":
    main()
