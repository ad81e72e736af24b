"""lmms-eval model ``llava_restore``: our checkpoints and reducers inside lmms-eval (0.7.3).

    python -m lmms_eval --model llava_restore \\
        --model_args pretrained=liuhaotian/llava-v1.5-7b,reduction=divprune,n_vis=64,restore=True \\
        --tasks gqa,pope --batch_size 8

Registered by the entry point ``lmms_eval.models`` (pyproject.toml; ``llava_restore.integrations``).

- ``generate_until`` answers through the generation core of the LLaVA-style CLIs
  (``llava_restore.eval.generate.answer_batch``): same prompts, padding, reduction and decoding, so
  the answers equal ``model_vqa_loader``'s on the same questions at any batch size. Requests are
  grouped by their ``generation_kwargs`` and batched in request order.
- ``loglikelihood``: log p(continuation | context) of the assistant turn, computed as generation
  computes it (the prompt's prefill with the reduction, then the continuation as decode steps over
  the KV cache), batched; ``is_greedy`` is whether every continuation token is the argmax.
- ``model_args``: see :data:`MODEL_KEYS` and every ``ReductionConfig`` field (``reduction`` is
  the CLIs' name of ``method``). A bad one ends the run with one line ``error: model_args: ...``
  naming the key (:class:`ModelArgsError`, a ``SystemExit``: lmms-eval turns any ``Exception``
  raised while it builds the model into a traceback and goes on).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import yaml
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from llava_restore.constants import DEFAULT_IMAGE_TOKEN
from llava_restore.eval.generate import (DTYPES, INPUT_ERRORS, GenSettings, ModelBundle, PrefillTimer, Sample,
                                         answer_batch, load_bundle, with_image_token)
from llava_restore.model.attention import SDPA_KERNELS, sdpa_kernels
from llava_restore.model.conversation import build_prompt, conv_templates
from llava_restore.model.llava_llama import LlavaLlamaForCausalLM
from llava_restore.model.mm_utils import pad_sequences, process_images, tokenizer_image_token
from llava_restore.model.vision import VisionCache
from llava_restore.reduction.config import ATTN_BACKENDS, ReductionConfig, config_field_names, make_reduction_config

# model_args besides the ReductionConfig fields: name -> what it is
MODEL_KEYS = {
    "pretrained": "checkpoint folder or hub name (liuhaotian, llava-hf or LoRA); required",
    "model_base": "base checkpoint of a LoRA folder",
    "conv_template": f"conversation template, one of {sorted(conv_templates)} (default vicuna_v1)",
    "attn_backend": f"attention backend, one of {list(ATTN_BACKENDS)} (default: the reduction config's, else sdpa)",
    "dtype": f"one of {list(DTYPES)} (auto: float16 on GPU from the config, float32 on CPU)",
    "device": "cuda, cuda:1, cpu (default: cuda when available); lmms-eval's --device also sets it",
    "vision_tower": "local folder replacing the config's mm_vision_tower",
    "allow_download": "True lets a hub checkpoint or vision tower be downloaded (default False)",
    "batch_size": "questions per generate call (lmms-eval's --batch_size sets it)",
    "max_batch_size": "lmms-eval's --max_batch_size (only for batch_size=auto, which is not supported)",
    "sdpa_kernel": f"torch SDPA back-ends the sdpa backend may use, one of {list(SDPA_KERNELS)}",
    "pad_multiple": "left-pad batched prompts to a multiple of this many tokens (default 16)",
    "vision_cache": "reuse the tower's outputs of the last N distinct images (same answers; default 0 = off)",
}
REDUCTION_ALIAS = {"reduction": "method"}  # the CLIs' --reduction
GEN_KWARGS = ("until", "max_new_tokens", "max_gen_toks", "temperature", "top_p", "num_beams", "do_sample")


class ModelArgsError(SystemExit):
    """A bad ``model_args`` key or value: exits with one line ``error: model_args: ...``."""

    def __init__(self, msg: str):
        super().__init__(f"error: model_args: {msg}")


@dataclass
class PluginArgs:
    load: argparse.Namespace  # what llava_restore.eval.generate.load_bundle reads
    settings: GenSettings  # decoding defaults of this model (a task's generation_kwargs override them)


def known_keys() -> List[str]:
    return sorted(set(MODEL_KEYS) | set(REDUCTION_ALIAS) | set(config_field_names()))


def _choice(key: str, value, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ModelArgsError(f"{key}={value!r} is not one of {sorted(allowed)}")
    return value


def _int(key: str, value, low: int) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise ModelArgsError(f"{key}={value!r} must be an integer >= {low}")
    if int(value) < low:
        raise ModelArgsError(f"{key}={value!r} must be an integer >= {low}")
    return int(value)


def _bool(key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ModelArgsError(f"{key}={value!r} must be True or False")
    return value


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def _decode(key: str, value):
    """lmms-eval passes every value it cannot read as a bool or a number as a string: ``None``
    (an optional field left to its preset) and ``[2,8,16]`` (a list field) are read here."""
    if not isinstance(value, str) or key == "method":
        return value
    if value in ("None", "null"):
        return None
    if value.startswith("["):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ModelArgsError(f"{key}={value!r} is not a list: {_first_line(err)}") from None
    return value


def reduction_from_args(red: Dict[str, object]) -> Optional[ReductionConfig]:
    """The resolved ReductionConfig of the reduction model_args (None: none given, plain LLaVA)."""
    for alias, name in REDUCTION_ALIAS.items():
        if alias in red:
            if name in red and red[name] != red[alias]:
                raise ModelArgsError(f"{alias}={red[alias]!r} and {name}={red[name]!r} disagree ({alias} is {name})")
            red[name] = red.pop(alias)
    red = {k: _decode(k, v) for k, v in red.items()}
    if not red or red == {"method": "none"}:
        return None
    for key, value in red.items():  # one at a time, so that the error names the key
        try:
            make_reduction_config({key: value})
        except Exception as err:  # omegaconf type errors and ReductionConfig.validate
            raise ModelArgsError(f"{key}={value!r}: {_first_line(err)}") from None
    try:
        cfg = make_reduction_config(dict(red)).resolve()
        if cfg.method != "none":
            from llava_restore.reduction import get_reducer

            get_reducer(cfg.method)
    except ValueError as err:  # unknown method (lists the known ones), checks across fields
        key = "reduction" if "unknown reduction method" in str(err) else "reduction settings"
        raise ModelArgsError(f"{key}: {_first_line(err)}") from None
    return cfg


def parse_model_args(args: Dict[str, object]) -> PluginArgs:
    """Check lmms-eval's parsed ``model_args`` (plus its batch_size/device): unknown keys and bad
    values raise :class:`ModelArgsError` naming the key."""
    red_keys = set(config_field_names()) | set(REDUCTION_ALIAS)
    unknown = sorted(k for k in args if k not in MODEL_KEYS and k not in red_keys)
    if unknown:
        raise ModelArgsError(f"unknown key {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                             + f"; known: {', '.join(known_keys())}")
    if args.get("pretrained") in (None, ""):
        raise ModelArgsError("pretrained= is required (a checkpoint folder or hub name)")
    attn = args.get("attn_backend")
    if attn is not None:
        _choice("attn_backend", attn, ATTN_BACKENDS)
    red = {k: v for k, v in args.items() if k in red_keys and k != "attn_backend"}
    cfg = reduction_from_args(red)  # attn_backend alone asks for no reduction (as the CLIs' --attn-impl)
    if cfg is not None and attn is not None:
        cfg = replace(cfg, attn_backend=attn)
    device = args.get("device")
    if device is not None:
        try:
            torch.device(str(device))
        except RuntimeError as err:
            raise ModelArgsError(f"device={device!r}: {_first_line(err)}") from None
    batch = args.get("batch_size", 1)
    if batch == "auto":
        raise ModelArgsError("batch_size='auto' is not supported; give a number")
    if args.get("max_batch_size") is not None:
        raise ModelArgsError("max_batch_size is only for batch_size=auto, which is not supported")
    load = argparse.Namespace(
        model_path=str(args["pretrained"]),
        model_base=None if args.get("model_base") is None else str(args["model_base"]),
        vision_tower=None if args.get("vision_tower") is None else str(args["vision_tower"]),
        allow_download=_bool("allow_download", args.get("allow_download", False)),
        device=None if device is None else str(device),
        dtype=_choice("dtype", args.get("dtype", "auto"), DTYPES),
        attn_impl=attn)
    settings = GenSettings(
        conv_mode=_choice("conv_template", args.get("conv_template", "vicuna_v1"), conv_templates),
        batch_size=_int("batch_size", batch, 1),
        pad_multiple=_int("pad_multiple", args.get("pad_multiple", 16), 1),
        reduction=cfg, attn_impl=attn,
        sdpa_kernel=_choice("sdpa_kernel", args.get("sdpa_kernel", "no-cudnn"), SDPA_KERNELS),
        vision_cache=_int("vision_cache", args.get("vision_cache", 0), 0),
        progress=False)
    return PluginArgs(load=load, settings=settings)


def settings_for(base: GenSettings, gen_kwargs: dict) -> Tuple[GenSettings, List[str]]:
    """(settings, stop strings) of one task's ``generation_kwargs`` (LLaVA's defaults otherwise:
    greedy, 128 new tokens, no stop string but EOS)."""
    unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
    if unknown:
        raise ValueError(f"llava_restore: unsupported generation_kwargs {unknown}; supported: {list(GEN_KWARGS)}")
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    max_new = gen_kwargs.get("max_new_tokens", gen_kwargs.get("max_gen_toks", base.max_new_tokens))
    temperature = float(gen_kwargs.get("temperature", 0.0) or 0.0)
    if gen_kwargs.get("do_sample") is False:
        temperature = 0.0
    num_beams = int(gen_kwargs.get("num_beams", 1))
    if num_beams != 1:
        raise ValueError(f"llava_restore: num_beams={num_beams} is not supported (LLaVA-1.5 evaluates with 1)")
    top_p = gen_kwargs.get("top_p")
    return replace(base, max_new_tokens=int(max_new), temperature=temperature, num_beams=1,
                   top_p=None if top_p is None else float(top_p)), until


def cut_at(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def user_turn(context: str, n_images: int, where: str) -> str:
    """LLaVA's user turn: "<image>\\n" + context, unless the context already places the image."""
    if n_images > 1:
        raise ValueError(f"llava_restore: {where} has {n_images} images; LLaVA-1.5 takes one per question")
    if n_images == 1 and DEFAULT_IMAGE_TOKEN not in context:
        return with_image_token(context)
    return context


class LlavaRestore(lmms):
    """lmms-eval's view of a llava-restore checkpoint (+ reduction)."""

    is_simple = True

    def __init__(self, **model_args):
        super().__init__()
        parsed = parse_model_args(model_args)
        self.settings = parsed.settings
        self.batch_size = parsed.settings.batch_size
        try:
            self.bundle: ModelBundle = load_bundle(parsed.load)
        except INPUT_ERRORS as err:
            raise ModelArgsError(f"pretrained={parsed.load.model_path!r}: {err}") from None
        self.vision_cache = VisionCache(self.settings.vision_cache) if self.settings.vision_cache else None

    @property
    def device(self) -> torch.device:
        return self.bundle.device

    # ------------------------------------------------------------------ requests
    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        doc = self.task_dict[task][split][doc_id]
        visuals = doc_to_visual(doc) if doc_to_visual is not None else []
        return [v for v in (visuals or []) if v is not None]

    def _sample(self, req: Instance, context: str, visuals: list) -> tuple:
        _, _, _, doc_id, task, split = req.args
        where = f"{task}/{split} doc {doc_id}"
        question = user_turn(context, len(visuals), where)
        sample = Sample(head={"question_id": doc_id}, question=question, image=None, image_ref=None, where=where)
        return sample, (visuals[0] if visuals else None)

    def generate_until(self, requests: List[Instance]) -> List[str]:
        out: List[Optional[str]] = [None] * len(requests)
        groups: Dict[str, List[int]] = {}
        for i, req in enumerate(requests):  # one group per generation_kwargs, in request order
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        bar = tqdm(total=len(requests), desc="llava_restore", disable=self.rank != 0)
        with PrefillTimer(self.bundle.model, self.bundle.device) as timer:
            for idxs in groups.values():
                settings, until = settings_for(self.settings, requests[idxs[0]].args[1])
                generator = None
                if settings.temperature > 0:
                    generator = torch.Generator(self.device).manual_seed(settings.seed)
                for start in range(0, len(idxs), settings.batch_size):
                    chunk = idxs[start:start + settings.batch_size]
                    batch = []
                    for i in chunk:
                        ctx, _, doc_to_visual, doc_id, task, split = requests[i].args
                        batch.append(self._sample(requests[i], ctx, self._visuals(doc_to_visual, doc_id, task, split)))
                    texts, _ = answer_batch(self.bundle, batch, settings, generator, timer, self.vision_cache)
                    for i, text in zip(chunk, texts):
                        out[i] = cut_at(text, until)
                        self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                    bar.update(len(chunk))
        bar.close()
        return out

    def generate_until_multi_round(self, requests) -> List[str]:
        raise NotImplementedError("llava_restore: multi-round generation is not supported")

    def loglikelihood(self, requests: List[Instance]) -> List[Tuple[float, bool]]:
        res: List[Tuple[float, bool]] = []
        bs = self.settings.batch_size
        for start in range(0, len(requests), bs):
            items = []
            for req in requests[start:start + bs]:
                ctx, target, doc_to_visual, doc_id, task, split = req.args
                cont = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
                sample, image = self._sample(req, ctx, self._visuals(doc_to_visual, doc_id, task, split))
                items.append((sample.question, cont, image))
            scores = self.score_continuations(items)
            for req, s in zip(requests[start:start + bs], scores):
                self.cache_hook.add_partial("loglikelihood", req.args, s)
            res.extend(scores)
        return res

    def score_continuations(self, items: Sequence[tuple]) -> List[Tuple[float, bool]]:
        """``[(user turn, continuation, image or None)]`` -> ``[(log p(continuation), is_greedy)]``.

        The continuation is the assistant's reply in the conversation template (its end-of-turn
        separator excluded), tokenised with the prompt; its tokens are the ones after the prompt's.
        They are scored as generation computes them: the prompt's prefill (left padding, with the
        reduction), then the continuation as decode steps over the KV cache, so the prefill-only
        parts of RESTORE (the distance term unless ``distance_in_decode``) apply as in generation."""
        tok, model, dev = self.bundle.tokenizer, self.bundle.model, self.bundle.device
        if not isinstance(model, LlavaLlamaForCausalLM):
            raise NotImplementedError(f"llava_restore: loglikelihood is implemented for LLaVA-1.5 checkpoints, "
                                      f"not {type(model).__name__}")
        conv = self.settings.conv_mode
        sep2 = conv_templates[conv].sep2
        prompts, conts = [], []
        for question, cont, _ in items:
            ctx_ids = tokenizer_image_token(build_prompt(question, conv), tok, return_tensors="pt")  # (Lc,)
            full = build_prompt(question, conv, answer=cont)
            full = full[:-len(sep2)] if sep2 and full.endswith(sep2) else full
            ids = tokenizer_image_token(full, tok, return_tensors="pt")  # (L,)
            n = min(len(ctx_ids), len(ids))
            differ = (ctx_ids[:n] != ids[:n]).nonzero()
            k = int(differ[0]) if len(differ) else n  # the common prefix is the prompt
            if k == len(ids):
                raise ValueError(f"llava_restore: the continuation {cont!r} adds no token to its context")
            prompts.append(ids[:k])
            conts.append(ids[k:])
        input_ids, mask = pad_sequences(prompts, tok.pad_token_id, side="left")  # (B, Lc)
        target, valid = pad_sequences(conts, tok.pad_token_id, side="right")  # (B, T)
        imgs = [img for _, _, img in items if img is not None]
        images = None
        if imgs:
            images = process_images(imgs, self.bundle.processor, model.config.image_aspect_ratio)
            images = images.to(dev, dtype=self.bundle.dtype)  # (n_img, 3, H, W)
        cfg, backend = self.settings.reduction, self.settings.attn_impl
        with torch.inference_mode(), sdpa_kernels(self.settings.sdpa_kernel):
            out = model(input_ids.to(dev), mask.to(dev), images, reduction=cfg, use_cache=True, padding_side="left",
                        attn_backend=backend, last_logits_only=True, vision_cache=self.vision_cache)
            logits = out.logits  # (B, 1, V): the first continuation token's
            if target.shape[1] > 1:  # right padding of the continuations only follows their real tokens
                step = model(target[:, :-1].to(dev), reduction=cfg, cache=out.cache, attn_backend=backend)
                logits = torch.cat([logits, step.logits], dim=1)  # (B, T, V)
        logp = F.log_softmax(logits.float(), dim=-1).cpu()  # (B, T, V)
        tok_lp = logp.gather(-1, target[..., None])[..., 0] * valid  # (B, T)
        greedy = (logp.argmax(-1) == target) | ~valid
        return [(float(tok_lp[b].sum()), bool(greedy[b].all())) for b in range(len(items))]
