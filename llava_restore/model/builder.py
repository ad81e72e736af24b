"""``load_pretrained_model``: LLaVA's loader signature over liuhaotian, llava-hf and LoRA folders."""
from __future__ import annotations

import json
import logging
import os

import torch
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, PreTrainedTokenizerFast

from .checkpoint import assign_decoder_weights, hf_to_ours, load_state_dict, ours_to_hf, save_state_dict, save_vision_tower
from .config import CheckpointError, LlavaConfig, parse_config, read_config_json
from .llava_llama import LlavaLlamaForCausalLM
from .qwen2_5_vl import is_qwen2_5_vl_config
from .qwen3_vl import is_qwen3_vl_config
from .vision import CLIPVisionTower, load_vision_tower

log = logging.getLogger(__name__)
_TOWER_PREFIX = "model.vision_tower.vision_tower."


def _resolve_device(device_map, device) -> torch.device:
    if isinstance(device_map, str) and device_map not in ("auto",):
        return torch.device(device_map)
    if isinstance(device_map, dict):
        devs = set(device_map.values())
        if len(devs) != 1:
            raise ValueError(f"device_map {device_map} splits the model; only single-device placement is supported")
        return torch.device(devs.pop())
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(torch_dtype, raw: dict, device: torch.device) -> torch.dtype:
    if isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if torch_dtype in (None, "auto"):
        if device.type == "cpu":
            return torch.float32
        name = raw.get("torch_dtype") or raw.get("dtype") or "float16"
        return getattr(torch, name)
    return getattr(torch, torch_dtype)


def resolve_model_path(name_or_path: str, allow_download: bool = False) -> str:
    """A local folder as is; a hub name through the local HF cache (downloaded only when allowed)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path) or name_or_path.startswith(("/", "./", "../")) or name_or_path.count("/") != 1:
        raise CheckpointError(f"checkpoint folder not found: {name_or_path}")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, local_files_only=not allow_download)
    except Exception as exc:  # LocalEntryNotFoundError, RepositoryNotFoundError, network errors
        hint = ("it is not in the local Hugging Face cache; pass a local folder or allow the download "
                "explicitly with --allow-download") if not allow_download else "the download failed"
        raise CheckpointError(f"checkpoint {name_or_path!r}: {hint} ({exc.__class__.__name__})") from exc


def is_lora_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def load_tokenizer(folder: str):
    """LLaVA loads LLaMA tokenizers with use_fast=False; a folder with only tokenizer.json uses the fast one."""
    has_spm = os.path.isfile(os.path.join(folder, "tokenizer.model"))
    has_fast = os.path.isfile(os.path.join(folder, "tokenizer.json"))
    if not (has_spm or has_fast):
        raise CheckpointError(f"checkpoint folder {folder} has no tokenizer (tokenizer.model or tokenizer.json)")
    if has_spm:
        tok = AutoTokenizer.from_pretrained(folder, use_fast=False, local_files_only=True)
    else:
        tok = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token  # LLaVA-1.5 (v1 templates) pads with unk
    return tok


def build_model(cfg: LlavaConfig, folder: str, *, vision_tower: str | None, allow_download: bool,
                dtype: torch.dtype, sd: dict[str, torch.Tensor]):
    """Instantiate the model and load ``sd`` (our key layout) into it, strictly."""
    if cfg.mm_use_im_start_end or cfg.mm_use_im_patch_token:
        raise CheckpointError(f"{folder}: mm_use_im_start_end / mm_use_im_patch_token are not supported (LLaVA-1.5 uses neither)")
    tower_sd = {k[len(_TOWER_PREFIX):]: v for k, v in sd.items() if k.startswith(_TOWER_PREFIX)}
    lm_sd = {k: v for k, v in sd.items() if not k.startswith(_TOWER_PREFIX)}
    if cfg.source_format == "hf" and vision_tower is None:
        vcfg = CLIPVisionConfig(**cfg.vision_config)
        vision_model = CLIPVisionModel(vcfg)
        missing, unexpected = vision_model.load_state_dict(tower_sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{folder}: vision tower weights mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        processor = CLIPImageProcessorPil.from_pretrained(folder, local_files_only=True) if os.path.isfile(
            os.path.join(folder, "preprocessor_config.json")) else None
        if processor is None:
            raise CheckpointError(f"{folder}: llava-hf folder has no preprocessor_config.json")
    else:
        name = vision_tower or cfg.mm_vision_tower
        if not name:
            raise CheckpointError(f"{folder}: config has no mm_vision_tower; pass vision_tower=")
        if tower_sd:
            log.info("ignoring %d vision-tower tensors stored in %s (the tower is loaded from %s, as LLaVA does)",
                     len(tower_sd), folder, name)
        vision_model, processor = load_vision_tower(name, base_dir=folder, allow_download=allow_download)
    tower = CLIPVisionTower(vision_model, cfg.mm_vision_select_layer, cfg.mm_vision_select_feature)
    with torch.device("meta"):
        model = LlavaLlamaForCausalLM(cfg, vision_tower=None)
    assign_decoder_weights(model, lm_sd, dtype, folder, cfg.text.tie_word_embeddings)
    model.model.vision_tower = tower.to(dtype)
    return model, processor


def load_pretrained_model(model_path: str, model_base: str | None = None, model_name: str | None = None,
                          load_8bit: bool = False, load_4bit: bool = False, device_map="auto", device: str | None = None,
                          torch_dtype=None, vision_tower: str | None = None, allow_download: bool = False,
                          attn_implementation: str = "sdpa", **unused):
    """Returns ``(tokenizer, model, image_processor, context_len)`` like LLaVA's builder.

    - liuhaotian folders (model_type ``llava_llama``); the vision tower is loaded by
      ``mm_vision_tower`` (hub name, or a folder, relative paths resolved against ``model_path``),
      or by the ``vision_tower`` override;
    - llava-hf folders (model_type ``llava``), converted on load;
    - Qwen2.5-VL folders (model_type ``qwen2_5_vl``): ``qwen2_5_vl.Qwen2_5_VLForRestore``;
    - LoRA folders (``adapter_config.json``) over ``model_base``.

    ``model_name`` is accepted for compatibility and never used to choose a code path.
    """
    if load_8bit or load_4bit:
        raise ValueError("8/4-bit loading is not supported; use torch_dtype=float16/bfloat16")
    if unused:
        log.debug("ignoring loader kwargs %s", sorted(unused))
    dev = _resolve_device(device_map, device)
    model_path = resolve_model_path(model_path, allow_download)
    if model_base is not None:
        model_base = resolve_model_path(model_base, allow_download)
    if is_lora_folder(model_path):
        return _load_lora(model_path, model_base, dev, torch_dtype, vision_tower, allow_download, attn_implementation)
    raw = read_config_json(model_path)
    if is_qwen2_5_vl_config(raw) or is_qwen3_vl_config(raw):
        return _load_qwen2_5_vl(model_path, raw, dev, torch_dtype, attn_implementation)
    cfg = parse_config(raw, model_path)
    dtype = _dtype(torch_dtype, raw, dev)
    sd = load_state_dict(model_path)
    if cfg.source_format == "hf":
        sd = hf_to_ours(sd)
    model, processor = build_model(cfg, model_path, vision_tower=vision_tower, allow_download=allow_download,
                                   dtype=dtype, sd=sd)
    tokenizer = load_tokenizer(model_path)
    model.attn_backend = attn_implementation
    model.to(dev).eval()
    context_len = raw.get("max_sequence_length", 2048)
    return tokenizer, model, processor, context_len


def _load_qwen2_5_vl(folder: str, raw: dict, dev, torch_dtype, attn_impl):
    """A Qwen2.5-VL / Qwen3-VL folder (model_type qwen2_5_vl / qwen3_vl): our M-RoPE decoder +
    transformers' vision tower.
    The image processor is the PIL ``Qwen2VLImageProcessorPil`` (AutoProcessor would also need
    torchvision for the video processor); the tokenizer is loaded on its own."""
    from transformers import Qwen2VLImageProcessorPil

    from .qwen2_5_vl import QwenVLConfig, build_qwen_model
    from .qwen3_vl import build_qwen3_model, parse_qwen3_vl_config

    qwen3 = is_qwen3_vl_config(raw)
    cfg = parse_qwen3_vl_config(raw, folder) if qwen3 else QwenVLConfig.from_dict(raw, folder)
    if not os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        raise CheckpointError(f"{folder}: Qwen2.5-VL folder has no preprocessor_config.json (the image processor: "
                              f"patch_size, merge_size, min_pixels/max_pixels)")
    processor = Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True)
    model = (build_qwen3_model if qwen3 else build_qwen_model)(cfg, folder, load_state_dict(folder),
                                                               _dtype(torch_dtype, raw, dev))
    tokenizer = load_tokenizer(folder)
    template = os.path.join(folder, "chat_template.json")  # the processor-level file some hub folders carry
    if not getattr(tokenizer, "chat_template", None) and os.path.isfile(template):
        with open(template) as f:
            tokenizer.chat_template = json.load(f)["chat_template"]
    model.attn_backend = attn_impl
    model.to(dev).eval()
    context_len = (raw.get("text_config") or raw).get("max_position_embeddings", 32768)
    return tokenizer, model, processor, context_len


def _load_lora(model_path, model_base, dev, torch_dtype, vision_tower, allow_download, attn_impl):
    from peft import PeftModel

    with open(os.path.join(model_path, "adapter_config.json")) as f:
        adapter_base = json.load(f).get("base_model_name_or_path")
    if model_base is None:
        raise CheckpointError(f"{model_path} is a LoRA folder (adapter_config.json); pass --model-base "
                              f"(its adapter_config names {adapter_base!r})")
    tokenizer, model, processor, ctx = load_pretrained_model(
        model_base, device_map=str(dev), torch_dtype=torch_dtype, vision_tower=vision_tower,
        allow_download=allow_download, attn_implementation=attn_impl)
    extra = os.path.join(model_path, "non_lora_trainables.bin")
    if os.path.isfile(extra):
        trainables = torch.load(extra, map_location="cpu", weights_only=True)
        trainables = {k.split("base_model.model.", 1)[-1]: v for k, v in trainables.items()}
        missing = sorted(set(trainables) - set(model.state_dict()))
        if missing:
            raise CheckpointError(f"{extra}: tensors not in the base model: {missing[:10]}")
        model.load_state_dict(trainables, strict=False)
    model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
    model.attn_backend = attn_impl
    return tokenizer, model.to(dev).eval(), processor, ctx


def save_pretrained(model: LlavaLlamaForCausalLM, folder: str, tokenizer=None, image_processor=None,
                    fmt: str = "liuhaotian", vision_subdir: str = "vision_tower", max_shard_bytes: int | None = None) -> None:
    """Write a loadable folder.  liuhaotian: LM + projector weights, the tower in ``vision_subdir``
    (referenced relatively by ``mm_vision_tower``); hf: one llava-hf folder with the tower inside."""
    os.makedirs(folder, exist_ok=True)
    cfg = model.config
    sd = model.state_dict()
    tower = model.get_vision_tower()
    if fmt == "liuhaotian":
        sd = {k: v for k, v in sd.items() if not k.startswith(_TOWER_PREFIX)}
        save_vision_tower(tower, os.path.join(folder, vision_subdir), image_processor)
        conf = cfg.to_liuhaotian_dict()
        conf["mm_vision_tower"] = vision_subdir
        save_state_dict(sd, folder, max_shard_bytes)
    elif fmt == "hf":
        t = cfg.text
        vcfg = tower.config.to_dict()
        vcfg = {k: v for k, v in vcfg.items() if k in CLIPVisionConfig().to_dict() and k not in ("transformers_version",)}
        vcfg["model_type"] = "clip_vision_model"
        conf = {
            "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
            "image_token_index": cfg.image_token_index if cfg.image_token_index is not None else t.vocab_size - 1,
            "projector_hidden_act": "gelu", "multimodal_projector_bias": True,
            "vision_feature_layer": cfg.mm_vision_select_layer,
            "vision_feature_select_strategy": "default" if cfg.mm_vision_select_feature == "patch" else "full",
            "image_seq_length": tower.num_patches,
            "text_config": {"model_type": "llama", "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size,
                            "num_hidden_layers": t.num_hidden_layers, "num_attention_heads": t.num_attention_heads,
                            "num_key_value_heads": t.num_key_value_heads, "head_dim": t.head_dim,
                            "vocab_size": t.vocab_size, "rms_norm_eps": t.rms_norm_eps,
                            "rope_parameters": {"rope_theta": t.rope_theta, "rope_type": "default"},
                            "attention_bias": t.attention_bias, "mlp_bias": t.mlp_bias, "hidden_act": t.hidden_act,
                            "tie_word_embeddings": t.tie_word_embeddings,
                            "max_position_embeddings": t.max_position_embeddings, "bos_token_id": t.bos_token_id,
                            "eos_token_id": t.eos_token_id, "pad_token_id": t.pad_token_id},
            "vision_config": vcfg,
            "tie_word_embeddings": t.tie_word_embeddings,
        }
        if cfg.mm_projector_type != "mlp2x_gelu":
            raise ValueError(f"the llava-hf format needs mlp2x_gelu, not {cfg.mm_projector_type}")
        save_state_dict(ours_to_hf(sd), folder, max_shard_bytes)
        if image_processor is not None:
            image_processor.save_pretrained(folder)
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}; known: liuhaotian, hf")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
