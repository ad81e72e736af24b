"""The one generation core behind every LLaVA-style eval CLI (and ``llava_restore.eval.run``).

A benchmark adapter turns its question file into :class:`Sample` s (prompt text, image loader,
answer-file fields); everything else lives here, once:

- LLaVA's flags (``--model-path --question-file --answers-file --conv-mode --num-chunks ...``) plus
  ours (``--batch-size --attn-impl --device --reduction/--n-vis/--restore ...``);
- LLaVA's chunking (:func:`get_chunk`);
- batched greedy/sampled generation with left padding (the answers of ``--batch-size 8`` equal
  those of ``--batch-size 1``: the model masks padding exactly);
- resume and integrity through :mod:`llava_restore.eval.answers` (answered ids are skipped, a
  truncated last line is redone, a duplicate is never written);
- missing images: one clear error naming the file and the question (answers written so far are
  kept), or with ``--skip-missing-images`` a record in ``errors.jsonl``;
- timings (prefill and generate ms/sample, samples/s, peak memory) appended to
  ``<answers-file>.stats.json``.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from tqdm import tqdm

from llava_restore.constants import DEFAULT_IMAGE_TOKEN
from llava_restore.eval.answers import (AnswerFileError, AnswerWriter, DuplicateAnswerError, KeyFn, MergeError,
                                        default_errors_path, load_json_list, question_id_key, question_id_prompt_key,
                                        read_jsonl)
from llava_restore.model.config import CheckpointError
from llava_restore.model.attention import SDPA_KERNELS, sdpa_kernels
from llava_restore.model.conversation import build_prompt, conv_templates
from llava_restore.model.qwen2_5_vl import (CHAT_TEMPLATE, ImageBudgetError, Qwen2_5_VLForRestore, chat_prompt_ids,
                                            default_conv_mode, process_qwen_images)
from llava_restore.model.mm_utils import ImageLoadError, load_image, pad_sequences, process_images, tokenizer_image_token
from llava_restore.model.vision import VisionCache
from llava_restore.reduction.cli import add_reduction_args, reduction_config_from_args
from llava_restore.reduction.config import ATTN_BACKENDS, ReductionConfig
from llava_restore.reduction.inllm import check_config as check_inllm_config, is_in_llm, schedule_summary
from llava_restore.reduction.types import BudgetError

DTYPES = ("auto", "float16", "bfloat16", "float32")
ANSWER_ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # shortuuid's 57 symbols
ANSWER_ID_LEN = 22


class QuestionFileError(ValueError):
    """A question record that cannot be used (the message names the file and the line or item)."""


class MissingImageError(ValueError):
    """An image that cannot be loaded, without --skip-missing-images (names the file and the question)."""


# Input errors a CLI reports as one line (exit status 1) instead of a traceback.
INPUT_ERRORS = (AnswerFileError, DuplicateAnswerError, MergeError, QuestionFileError, MissingImageError,
                ImageLoadError, CheckpointError, FileNotFoundError, ImageBudgetError, BudgetError)


# ----------------------------------------------------------------------------- samples and adapters

@dataclass
class Sample:
    """One question as the model sees it, plus the fields of its answer record."""

    head: dict  # answer fields before "text": question_id [, round_id], prompt
    question: str  # the user turn (starts with "<image>\n" when there is an image)
    image: Optional[Callable[[], Image.Image]]  # loads the image; None for a text-only question
    image_ref: Optional[str]  # the image file (or cell) named in errors
    where: str  # "file:line" (or "file item #i") of the record, for errors
    tail: dict = field(default_factory=dict)  # answer fields after "text" (MMBench: options, option_char)
    key: Hashable = None  # answer key, set by assign_keys()


class Adapter:
    """How one family of question files becomes samples. Subclasses set the class attributes."""

    name = "base"
    description = ""
    max_new_tokens = 128  # LLaVA's default for this CLI

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        """Adapter-specific flags (e.g. --single-pred-prompt)."""

    def options(self, args: argparse.Namespace) -> dict:
        """The adapter options of parsed CLI args (keyword arguments of :meth:`load`)."""
        return {}

    def load(self, question_file: str, image_folder: str, **options) -> List[Sample]:
        raise NotImplementedError


def require(record: dict, names: Sequence[str], where: str) -> list:
    """``[record[n] for n in names]``; QuestionFileError naming the record and the missing field."""
    missing = [n for n in names if n not in record]
    if missing:
        raise QuestionFileError(f"{where}: question record lacks field(s) {missing}: {str(record)[:120]}")
    return [record[n] for n in names]


def check_question_file(path: str) -> Path:
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise FileNotFoundError(f"question file not found: {p}")
    return p


def json_list_items(path: Path, what: str) -> Iterator[Tuple[int, str, dict]]:
    """``(index, where, item)`` for each object of a JSON-list question file (QuestionFileError
    naming the file and the item otherwise)."""
    for i, item in enumerate(load_json_list(path, what, QuestionFileError)):
        where = f"{path} item #{i}"
        if not isinstance(item, dict):
            raise QuestionFileError(f"{where}: expected a JSON object, got {type(item).__name__}")
        yield i, where, item


def file_image(image_folder: str, rel: str) -> tuple:
    """(loader, path) of an image file under ``image_folder``."""
    path = os.path.join(os.path.expanduser(image_folder), rel)
    return (lambda: load_image(path)), path


def base64_image(data: str, ref: str) -> Callable[[], Image.Image]:
    """Loader of a base64-encoded image cell (MMBench tsv)."""

    def load() -> Image.Image:
        from io import BytesIO

        from llava_restore.model.mm_utils import to_rgb

        try:
            raw = base64.b64decode(data, validate=True)
            with Image.open(BytesIO(raw)) as im:
                im.load()
                return to_rgb(im.copy())
        except (ValueError, OSError) as err:
            raise ImageLoadError(f"cannot decode the base64 image of {ref}: {err}") from None

    return load


def with_image_token(text: str) -> str:
    return f"{DEFAULT_IMAGE_TOKEN}\n{text}"


def choose_key_fn(samples: Sequence[Sample], question_file) -> KeyFn:
    """``question_id`` when it is unique over the file, else ``(question_id, prompt)`` (MME, TextVQA)."""
    ids = [question_id_key(s.head) for s in samples]
    if len(set(ids)) == len(ids):
        return question_id_key
    seen: Dict[Hashable, str] = {}
    for s in samples:
        k = question_id_prompt_key(s.head)
        if k in seen:
            raise QuestionFileError(f"{question_file}: question {k[0]!r} appears twice with the same text "
                                    f"({seen[k]} and {s.where}); its answers could not be told apart")
        seen[k] = s.where
    return question_id_prompt_key


def assign_keys(samples: List[Sample], question_file) -> KeyFn:
    key_fn = choose_key_fn(samples, question_file)
    for s in samples:
        s.key = key_fn(s.head)
    return key_fn


def get_chunk(items: Sequence, num_chunks: int, chunk_idx: int) -> list:
    """Chunk ``chunk_idx`` of ``num_chunks``, split as LLaVA's get_chunk: ceil(len/n) items per chunk.

    Where LLaVA has fewer chunks than ``num_chunks`` (e.g. 10 items in 4 chunks of 3, 3, 3, 1; or
    in 6 chunks of 2: only 5 exist) the missing chunks are empty here instead of an IndexError.
    """
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx {chunk_idx} must be in [0, --num-chunks {num_chunks})")
    size = math.ceil(len(items) / num_chunks)
    return list(items[chunk_idx * size:(chunk_idx + 1) * size])


def model_name_from_path(model_path: str) -> str:
    """LLaVA's get_model_name_from_path: the folder name, or "<parent>_checkpoint-N"."""
    parts = os.path.normpath(os.path.expanduser(model_path)).strip("/").split("/")
    return f"{parts[-2]}_{parts[-1]}" if parts[-1].startswith("checkpoint-") and len(parts) > 1 else parts[-1]


def answer_id(model_id: str, key: Hashable) -> str:
    """A deterministic 22-symbol id in shortuuid's alphabet (LLaVA draws a random one), so that a
    resumed run and an uninterrupted one write identical files."""
    n = int.from_bytes(hashlib.sha256(f"{model_id}\0{key!r}".encode()).digest(), "big")
    out = []
    for _ in range(ANSWER_ID_LEN):
        n, r = divmod(n, len(ANSWER_ID_ALPHABET))
        out.append(ANSWER_ID_ALPHABET[r])
    return "".join(out)


# ----------------------------------------------------------------------------- settings and model

@dataclass
class GenSettings:
    conv_mode: str = "vicuna_v1"
    temperature: float = 0.0
    top_p: Optional[float] = None
    num_beams: int = 1
    max_new_tokens: int = 128
    batch_size: int = 1
    pad_multiple: int = 16  # batched prompts are left-padded to a multiple of this (1 = off)
    reduction: Optional[ReductionConfig] = None
    attn_impl: Optional[str] = None  # None: the reduction config's backend, else the model's
    sdpa_kernel: str = "no-cudnn"  # which torch SDPA back-ends the sdpa backend may use (SDPA_KERNELS)
    skip_missing_images: bool = False
    # images whose vision-tower outputs are kept for the run's later questions about them (0 = off).
    # Answers are unchanged; prefill timings then exclude the tower for repeated images
    vision_cache: int = 0
    seed: int = 0
    progress: bool = True

    def decoding(self) -> dict:
        """The fields that change answers (they enter a run folder's hash)."""
        return {"conv_mode": self.conv_mode, "temperature": self.temperature, "top_p": self.top_p,
                "num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens}


@dataclass
class ModelBundle:
    tokenizer: object
    model: torch.nn.Module
    processor: object
    model_id: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype


def add_model_args(ap: argparse.ArgumentParser, default_model_path: Optional[str] = None) -> None:
    g = ap.add_argument_group("model")
    g.add_argument("--model-path", required=default_model_path is None, default=default_model_path,
                   help="checkpoint folder (liuhaotian, llava-hf or LoRA)")
    g.add_argument("--model-base", default=None, help="base checkpoint of a LoRA --model-path")
    g.add_argument("--vision-tower", default=None, help="local folder replacing the config's mm_vision_tower")
    g.add_argument("--allow-download", action="store_true", help="let the vision tower come from the hub")
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: float16 on GPU (config), float32 on CPU")
    g.add_argument("--attn-impl", choices=ATTN_BACKENDS, default=None,
                   help="attention backend (default: the reduction config's, else sdpa)")
    g.add_argument("--sdpa-kernel", choices=SDPA_KERNELS, default="no-cudnn",
                   help="torch scaled_dot_product_attention back-ends the sdpa backend may use: no-cudnn (default) "
                        "= flash/efficient/math, as cuDNN plans each new shape (tens to hundreds of ms on first use); "
                        "auto = torch's choice; else exactly that one")


def add_decoding_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("decoding (LLaVA's flags; every v1_5 eval script passes --temperature 0)")
    g.add_argument("--conv-mode", default=None,
                   help=f"one of {sorted(conv_templates) + [CHAT_TEMPLATE]} ({CHAT_TEMPLATE}: the tokenizer's own, "
                        f"Qwen2.5-VL); default: {CHAT_TEMPLATE} for a Qwen2.5-VL folder, else vicuna_v1")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (LLaVA-1.5 eval)")
    g.add_argument("--top_p", type=float, default=None)
    g.add_argument("--num_beams", type=int, default=1, help="only 1 (as LLaVA-1.5 eval)")
    g.add_argument("--max_new_tokens", type=int, default=None, help="default: the benchmark's LLaVA value")
    g.add_argument("--batch-size", type=int, default=1, help="questions per generate call (left padding)")
    g.add_argument("--pad-to-multiple-of", type=int, default=16, dest="pad_multiple",
                   help="left-pad batched prompts to a multiple of this many tokens, so batch shapes repeat "
                        "(GPU kernels are planned per shape); 1 = pad to the longest prompt only")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0 only)")
    g.add_argument("--skip-missing-images", action="store_true",
                   help="skip questions whose image cannot be loaded, recording them in errors.jsonl")
    g.add_argument("--vision-cache", type=int, default=0, metavar="N",
                   help="keep the vision tower's outputs of the last N distinct images and reuse them for later "
                        "questions about the same image (same answers; prefill timings then exclude the tower "
                        "for repeats); 0 = off")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_reduction_args(ap)


def settings_from_args(args: argparse.Namespace, adapter: Adapter, parser: argparse.ArgumentParser) -> GenSettings:
    """GenSettings of parsed args; bad values end in ``parser.error`` naming the flag."""
    args.conv_mode = args.conv_mode or default_conv_mode(args.model_path)
    if args.conv_mode not in conv_templates and args.conv_mode != CHAT_TEMPLATE:
        parser.error(f"--conv-mode {args.conv_mode!r} is unknown; known: {sorted(conv_templates) + [CHAT_TEMPLATE]}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.pad_multiple < 1:
        parser.error(f"--pad-to-multiple-of must be >= 1, got {args.pad_multiple}")
    if args.vision_cache < 0:
        parser.error(f"--vision-cache must be >= 0 (0 = off), got {args.vision_cache}")
    if args.num_beams != 1:
        parser.error(f"--num_beams {args.num_beams}: only 1 is supported (LLaVA-1.5 evaluates with 1)")
    if args.temperature < 0:
        parser.error(f"--temperature must be >= 0, got {args.temperature}")
    max_new = adapter.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    if max_new < 1:
        parser.error(f"--max_new_tokens must be >= 1, got {max_new}")
    try:
        cfg = reduction_config_from_args(args)
        if cfg is not None and cfg.method != "none":
            from llava_restore.reduction import get_reducer

            get_reducer(cfg.method)
            if is_in_llm(cfg.method):
                check_inllm_config(cfg)  # in-LLM rows run without RESTORE
    except Exception as err:  # omegaconf/validation errors name the bad key or value
        parser.error(f"bad reduction flags: {err}")
    return GenSettings(conv_mode=args.conv_mode, temperature=args.temperature, top_p=args.top_p,
                       num_beams=args.num_beams, max_new_tokens=max_new, batch_size=args.batch_size,
                       pad_multiple=args.pad_multiple,
                       reduction=cfg, attn_impl=args.attn_impl, sdpa_kernel=args.sdpa_kernel,
                       skip_missing_images=args.skip_missing_images, vision_cache=args.vision_cache,
                       seed=args.seed, progress=not args.no_progress)


def load_bundle(args: argparse.Namespace) -> ModelBundle:
    from llava_restore.model.builder import load_pretrained_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    model_path = os.path.expanduser(args.model_path)
    tok, model, proc, _ = load_pretrained_model(model_path, args.model_base, device=str(device), torch_dtype=dtype,
                                                vision_tower=args.vision_tower, allow_download=args.allow_download,
                                                attn_implementation=args.attn_impl or "sdpa")
    return ModelBundle(tok, model, proc, model_name_from_path(args.model_path), device)


class LazyBundle:
    """Loads the model on first use only, so a fully answered run never loads it."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._bundle: Optional[ModelBundle] = None

    def __call__(self) -> ModelBundle:
        if self._bundle is None:
            self._bundle = load_bundle(self.args)
        return self._bundle


LOAD_ARGS = ("model_path", "model_base", "vision_tower", "allow_download", "device", "dtype", "attn_impl")


class BundleCache:
    """Loaded models kept across runs of one process (``llava_restore.ablation.worker``).

    Keyed by every argument that ``load_bundle`` reads, so two runs share a model only when
    they would have loaded the same one; a run's answers do not depend on whether its model
    came from here (the reduction and decoding settings travel with each generate call)."""

    def __init__(self):
        self._bundles: dict = {}
        self.loads = 0

    def lazy(self, args: argparse.Namespace) -> Callable[[], ModelBundle]:
        key = tuple(getattr(args, name) for name in LOAD_ARGS)

        def get() -> ModelBundle:
            if key not in self._bundles:
                self._bundles[key] = load_bundle(args)
                self.loads += 1
            return self._bundles[key]
        return get


# ----------------------------------------------------------------------------- timings

class PrefillTimer:
    """Wall time of the prefill forwards inside ``model.generate``.

    Forward hooks on this model instance (removed on exit) time every call made without a KV
    cache, i.e. the prefill; CUDA is synchronised around it. ``calls`` keeps one
    ``(seconds, input_ids shape)`` per prefill, for benchmarks that look for slow batches.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.total_s = 0.0
        self.calls: List[tuple] = []
        self._t0: Optional[float] = None
        self._shape: tuple = ()
        self._handles: list = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pre(self, module, args, kwargs):
        if kwargs.get("cache") is None:
            self._sync()
            ids = args[0] if args else kwargs.get("input_ids")
            self._shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else ()
            self._t0 = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        if self._t0 is not None:
            self._sync()
            dt = time.perf_counter() - self._t0
            self.total_s += dt
            self.calls.append((dt, self._shape))
            self._t0 = None

    def __enter__(self) -> "PrefillTimer":
        self._handles = [self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
                         self.model.register_forward_hook(self._post, with_kwargs=True)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def peak_memory(device: torch.device) -> tuple:
    """(MiB, kind): CUDA max allocated since the reset in generate_chunk, else the process's max RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def stats_path(answers_file) -> Path:
    return Path(str(answers_file) + ".stats.json")


def append_stats(answers_file, stats: dict) -> None:
    """One record per invocation in ``<answers-file>.stats.json`` (a JSON list, rewritten atomically)."""
    path = stats_path(answers_file)
    records = json.loads(path.read_text()) if path.is_file() else []
    records.append(stats)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    os.replace(tmp, path)


def aggregate_stats(records: Sequence[dict]) -> dict:
    """Timings over invocations/shards: sums of seconds and samples, then per-sample figures."""
    n = sum(r["n_generated"] for r in records)
    wall = sum(r["wall_s"] for r in records)
    peaks = [r for r in records if r.get("peak_memory_mb") is not None]
    peak = max(peaks, key=lambda r: r["peak_memory_mb"]) if peaks else None
    per = (lambda s: 1000.0 * s / n) if n else (lambda s: None)
    return {"n_timed": n,
            "prefill_ms_per_sample": per(sum(r["prefill_s"] for r in records)),
            "generate_ms_per_sample": per(sum(r["generate_s"] for r in records)),
            "samples_per_s": n / wall if wall > 0 else None,
            "wall_s": wall,
            "peak_memory_mb": peak["peak_memory_mb"] if peak else None,
            "peak_memory_kind": peak["peak_memory_kind"] if peak else None,
            "devices": sorted({r["device"] for r in records}),
            "batch_sizes": sorted({r["batch_size"] for r in records}),
            # in-LLM methods: the layer-average n_vis and the visual tokens per layer
            "inllm": next((r["inllm"] for r in records if r.get("inllm")), None)}


# ----------------------------------------------------------------------------- skipped questions

class SkipLog:
    """``errors.jsonl``: one ``{question_id, prompt, ..., image, error}`` per skipped question.

    Opening it drops the records of this chunk's questions (they are retried now), keeping the
    others; a question skipped again is appended again.
    """

    def __init__(self, path, key_fn: KeyFn, chunk_keys: set):
        self.path, self.key_fn = Path(path), key_fn
        self.keys: set = set()
        if self.path.is_file():
            kept = [r for r in read_jsonl(self.path) if key_fn(r) not in chunk_keys]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)

    def add(self, sample: Sample, error: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**sample.head, "image": sample.image_ref, "error": error}) + "\n")
        self.keys.add(sample.key)


# ----------------------------------------------------------------------------- the core

def answer_batch(bundle: ModelBundle, batch: List[tuple], settings: GenSettings,
                 generator: Optional[torch.Generator], timer: PrefillTimer,
                 vision_cache: Optional[VisionCache] = None) -> tuple:
    """Generate for ``[(sample, image or None), ...]``; returns (texts, generate seconds)."""
    tok, model, dev = bundle.tokenizer, bundle.model, bundle.device
    qwen = isinstance(model, Qwen2_5_VLForRestore)  # Qwen's chat template and dynamic-resolution images
    if qwen:
        ids = [chat_prompt_ids(s.question, tok, settings.conv_mode) for s, _ in batch]
    else:
        ids = [tokenizer_image_token(build_prompt(s.question, settings.conv_mode), tok, return_tensors="pt")
               for s, _ in batch]
    # batches are padded to a multiple of settings.pad_multiple so their shapes repeat (GPU
    # attention/matmul back-ends plan per shape); single prompts are not padded at all
    multiple = settings.pad_multiple if len(ids) > 1 else 1
    input_ids, mask = pad_sequences(ids, tok.pad_token_id, side="left", multiple_of=multiple)  # (B, L)
    imgs = [img for _, img in batch if img is not None]
    images = None
    extra = {}  # Qwen: errors name the image files (N differs per image)
    if imgs and qwen:
        images = process_qwen_images(imgs, bundle.processor, dev, bundle.dtype)
        extra["image_names"] = [s.image_ref for s, img in batch if img is not None]
    elif imgs:
        images = process_images(imgs, bundle.processor, model.config.image_aspect_ratio)  # (n_img, 3, H, W)
        images = images.to(dev, dtype=bundle.dtype)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    with torch.inference_mode(), sdpa_kernels(settings.sdpa_kernel):
        out = model.generate(input_ids.to(dev), mask.to(dev), images, reduction=settings.reduction,
                             max_new_tokens=settings.max_new_tokens, do_sample=settings.temperature > 0,
                             temperature=settings.temperature, top_p=settings.top_p, num_beams=settings.num_beams,
                             use_cache=True, attn_backend=settings.attn_impl, generator=generator,
                             vision_cache=vision_cache, **extra)  # (B, T)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    texts = [t.strip() for t in tok.batch_decode(out.cpu(), skip_special_tokens=True)]
    return texts, time.perf_counter() - t0


def generate_chunk(get_bundle: Callable[[], ModelBundle], chunk: Sequence[Sample], key_fn: KeyFn,
                   answers_file, errors_file, settings: GenSettings) -> dict:
    """Answer the unanswered questions of ``chunk`` into ``answers_file`` (resuming it).

    Returns this invocation's stats (also appended to ``<answers_file>.stats.json``).
    """
    answers_file = Path(os.path.expanduser(str(answers_file)))
    writer = AnswerWriter(answers_file, key_fn)
    try:
        pending = [s for s in chunk if s.key not in writer]
        skips = SkipLog(errors_file, key_fn, {s.key for s in chunk})
        stats = {"n_chunk": len(chunk), "n_already": len(chunk) - len(pending), "n_generated": 0,
                 "n_skipped": 0, "prefill_s": 0.0, "generate_s": 0.0, "wall_s": 0.0,
                 "batch_size": settings.batch_size, "peak_memory_mb": None, "peak_memory_kind": None,
                 "device": None, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if not pending:
            return stats
        bundle = get_bundle()
        stats["device"] = str(bundle.device)
        red = settings.reduction
        if red is not None and is_in_llm(red.method):  # n_vis is the layer average of these counts
            stats["inllm"] = schedule_summary(red, bundle.model.config.text.num_hidden_layers,
                                              bundle.model.get_vision_tower().num_patches)
        if bundle.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(bundle.device)
        generator = None
        if settings.temperature > 0:
            generator = torch.Generator(bundle.device).manual_seed(settings.seed)
        t_start = time.perf_counter()
        bar = tqdm(total=len(pending), desc=answers_file.name, disable=not settings.progress, unit="q")
        cache = VisionCache(settings.vision_cache) if settings.vision_cache else None

        def flush(batch: List[tuple]) -> None:
            if not batch:
                return
            texts, gen_s = answer_batch(bundle, batch, settings, generator, timer, cache)
            for (s, _), text in zip(batch, texts):
                writer.write({**s.head, "text": text, **s.tail, "answer_id": answer_id(bundle.model_id, s.key),
                              "model_id": bundle.model_id, "metadata": {}})
            stats["n_generated"] += len(batch)
            stats["generate_s"] += gen_s
            bar.update(len(batch))
            batch.clear()

        with PrefillTimer(bundle.model, bundle.device) as timer:
            batch: List[tuple] = []
            try:
                for s in pending:
                    img = None
                    if s.image is not None:
                        try:
                            img = s.image()
                        except ImageLoadError as err:
                            if not settings.skip_missing_images:
                                flush(batch)
                                raise MissingImageError(
                                    f"question {s.head['question_id']!r} ({s.where}): {err}; the {len(writer.answered)}"
                                    f" answers so far are kept in {answers_file}; pass --skip-missing-images to "
                                    "skip such questions") from None
                            skips.add(s, str(err))
                            stats["n_skipped"] += 1
                            bar.update(1)
                            continue
                    batch.append((s, img))
                    if len(batch) == settings.batch_size:
                        flush(batch)
                flush(batch)
            finally:
                bar.close()
                stats["prefill_s"] = timer.total_s
                stats["wall_s"] = time.perf_counter() - t_start
                stats["peak_memory_mb"], stats["peak_memory_kind"] = peak_memory(bundle.device)
                stats["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                if cache is not None:
                    stats["vision_cache"] = {"max_images": cache.max_images, "hits": cache.hits, "misses": cache.misses}
                append_stats(answers_file, stats)
        return stats
    finally:
        writer.close()


# ----------------------------------------------------------------------------- the CLI

def build_parser(adapter: Adapter) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=adapter.description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = ap.add_argument_group("data (LLaVA's flags)")
    g.add_argument("--question-file", required=True)
    g.add_argument("--image-folder", default="")
    g.add_argument("--answers-file", required=True, help="resumed when it exists")
    g.add_argument("--num-chunks", type=int, default=1)
    g.add_argument("--chunk-idx", type=int, default=0)
    g.add_argument("--errors-file", default=None,
                   help="skipped questions; default errors.jsonl next to the answers "
                        "(<answers>.errors.jsonl when --num-chunks > 1)")
    add_model_args(ap)
    add_decoding_args(ap)
    adapter.add_args(ap)
    return ap


def default_chunk_errors_path(answers_file, num_chunks: int) -> Path:
    if num_chunks == 1:
        return default_errors_path(answers_file)
    p = Path(answers_file)
    return p.with_name(p.stem + ".errors.jsonl")


def run_cli(adapter: Adapter, argv=None) -> dict:
    """Parse LLaVA-style flags and answer one chunk of the question file."""
    ap = build_parser(adapter)
    args = ap.parse_args(argv)
    settings = settings_from_args(args, adapter, ap)
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        ap.error(f"--chunk-idx {args.chunk_idx} must be in [0, --num-chunks {args.num_chunks})")
    samples = adapter.load(args.question_file, args.image_folder, **adapter.options(args))
    key_fn = assign_keys(samples, args.question_file)
    chunk = get_chunk(samples, args.num_chunks, args.chunk_idx)
    errors_file = args.errors_file or default_chunk_errors_path(os.path.expanduser(args.answers_file), args.num_chunks)
    stats = generate_chunk(LazyBundle(args), chunk, key_fn, args.answers_file, errors_file, settings)
    print(f"{args.answers_file}: {stats['n_generated']} answered now, {stats['n_already']} before, "
          f"{stats['n_skipped']} skipped (of {stats['n_chunk']} in chunk {args.chunk_idx}/{args.num_chunks})",
          file=sys.stderr)
    return stats


def cli_entry(fn: Callable, argv=None):
    """Run ``fn(argv)``; an input error becomes one ``error: ...`` line on stderr and exit status 1."""
    try:
        return fn(argv)
    except INPUT_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
