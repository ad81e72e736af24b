"""Merge a LoRA folder into its base and write a full liuhaotian-format checkpoint.

    python -m llava_restore.train.merge_lora --model-path LORA --model-base BASE --save-model-path OUT

The result loads with ``load_pretrained_model(OUT)`` (and every eval CLI's ``--model-path OUT``).
Its ``vision_tower/`` is written by ``checkpoint.save_vision_tower`` (``vision_model.``-prefixed keys,
which transformers 4.3x reads too).
Without merging, ``--model-path LORA --model-base BASE`` works in eval directly.
"""
from __future__ import annotations

import argparse
import logging

import torch

from llava_restore.model.builder import is_lora_folder, load_pretrained_model, save_pretrained


def merge_lora(model_path: str, model_base: str, save_model_path: str, dtype: str = "auto",
               vision_tower: str | None = None) -> None:
    if not is_lora_folder(model_path):
        raise ValueError(f"{model_path} is not a LoRA folder (no adapter_config.json)")
    torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
    tok, model, proc, _ = load_pretrained_model(model_path, model_base=model_base, device="cpu",
                                                torch_dtype=torch_dtype, vision_tower=vision_tower)
    save_pretrained(model, save_model_path, tokenizer=tok, image_processor=proc, fmt="liuhaotian")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True, help="LoRA folder (adapter_config.json, non_lora_trainables.bin)")
    ap.add_argument("--model-base", required=True, help="the base checkpoint the LoRA was trained over")
    ap.add_argument("--save-model-path", required=True)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                    help="weights dtype of the merged checkpoint (auto: float32 on CPU)")
    ap.add_argument("--vision-tower", default=None, help="local CLIP folder replacing the base config's tower")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    merge_lora(args.model_path, args.model_base, args.save_model_path, args.dtype, args.vision_tower)
    print(f"merged {args.model_path} over {args.model_base} -> {args.save_model_path}")


if __name__ == "__main__":
    main()
