"""LoRA on the decoder's linear layers (peft), the optional trainable projector, and adapter I/O.

A saved adapter folder is LLaVA's LoRA layout: ``adapter_config.json`` + ``adapter_model.safetensors``
(peft) and ``non_lora_trainables.bin`` (the projector, keyed ``base_model.model.model.mm_projector.*``),
which ``load_pretrained_model(folder, model_base=BASE)`` merges over the base.
"""
from __future__ import annotations

import os

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

NON_LORA_FILE = "non_lora_trainables.bin"
ADAPTER_FILE = "adapter_model.safetensors"


def target_regex(modules: list[str]) -> str:
    """peft full-match pattern for the named linears of the LLaMA decoder layers only (never the
    CLIP tower, whose attention also has q/k/v projections, nor the projector)."""
    return rf"model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{'|'.join(modules)})"


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str],
               tune_mm_projector: bool, base_name: str | None) -> PeftModel:
    """Freeze everything, add LoRA adapters, optionally unfreeze ``model.mm_projector``."""
    for p in model.parameters():
        p.requires_grad_(False)
    lcfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_regex(target_modules),
                      bias="none")
    peft_model = get_peft_model(model, lcfg)
    peft_model.peft_config["default"].base_model_name_or_path = base_name  # peft would record None
    if tune_mm_projector:
        for p in peft_model.get_base_model().model.mm_projector.parameters():
            p.requires_grad_(True)
    n_lora = sum(1 for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" in n)
    if n_lora == 0:
        raise ValueError(f"LoRA target modules {target_modules} matched no decoder layer")
    return peft_model


def trainable_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of every trainable tensor, gathered first when ZeRO-3 has partitioned them.
    Collective under ZeRO-3: every rank must call it."""
    named = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    if any(hasattr(p, "ds_id") for _, p in named):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().float().cpu().clone() for n, p in named}
    return {n: p.detach().float().cpu().clone() for n, p in named}


def save_adapter(peft_model: PeftModel, folder: str, state: dict[str, torch.Tensor]) -> None:
    """Write the adapter folder from ``state`` (names as in ``peft_model.named_parameters()``)."""
    os.makedirs(folder, exist_ok=True)
    lora = {k: v for k, v in state.items() if "lora_" in k}
    other = {k: v for k, v in state.items() if "lora_" not in k}
    peft_model.save_pretrained(folder, state_dict=lora, safe_serialization=True)
    if other:
        torch.save(other, os.path.join(folder, NON_LORA_FILE))


def load_adapter_into(peft_model: PeftModel, folder: str) -> None:
    """Load a folder written by ``save_adapter`` into a live peft model (for ``--resume``)."""
    path = os.path.join(folder, ADAPTER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {folder} has no {ADAPTER_FILE}")
    result = set_peft_model_state_dict(peft_model, load_file(path))
    if result.unexpected_keys:
        raise ValueError(f"{path}: tensors not in the model: {result.unexpected_keys[:5]}")
    extra = os.path.join(folder, NON_LORA_FILE)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n}
    if os.path.isfile(extra):
        sd = torch.load(extra, map_location="cpu", weights_only=True)
        if set(sd) != trainable:
            raise ValueError(f"{extra} holds {sorted(sd)[:4]}..., but the trainable non-LoRA tensors are "
                             f"{sorted(trainable)[:4]}... (was tune_mm_projector changed?)")
        params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for k, v in sd.items():
                params[k].copy_(v)
    elif trainable:
        raise ValueError(f"checkpoint {folder} has no {NON_LORA_FILE} but the projector is trainable")
