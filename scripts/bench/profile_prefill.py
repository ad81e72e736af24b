"""Prefill time per batch at several batch sizes (the same GQA-style prompts, CUDA-synchronised),
and a torch.profiler table of the largest batch: where batched prefill spends its time.

    python scripts/bench/profile_prefill.py [--device cuda] [--batch-sizes 1 8] [--reduction divprune --n-vis 64 --restore]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llava_restore.eval.benchmarks import get_adapter, get_benchmark  # noqa: E402
from llava_restore.eval.generate import add_decoding_args, add_model_args, load_bundle, settings_from_args  # noqa: E402
from llava_restore.eval.generate import build_prompt  # noqa: E402
from llava_restore.model.attention import sdpa_kernels  # noqa: E402
from llava_restore.model.mm_utils import pad_sequences, process_images, tokenizer_image_token  # noqa: E402


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(REPO / "playground/data/eval"))
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=10)
    add_model_args(ap, default_model_path=str(REPO / "playground/cache/llava-playground"))
    add_decoding_args(ap)
    args = ap.parse_args(argv)
    bench = get_benchmark("gqa")
    adapter = get_adapter(bench.adapter)
    settings = settings_from_args(args, adapter, ap)
    root = Path(args.data_root) / bench.folder
    samples = adapter.load(str(root / bench.question_file), str(root / bench.image_folder), **bench.adapter_options)
    b = load_bundle(args)
    dev, model, tok = b.device, b.model, b.tokenizer
    big = max(args.batch_sizes)
    ids = [tokenizer_image_token(build_prompt(s.question, settings.conv_mode), tok, return_tensors="pt") for s in samples[:big]]
    px = process_images([s.image() for s in samples[:big]], b.processor, model.config.image_aspect_ratio).to(dev, b.dtype)

    def prefill(n):
        input_ids, mask = pad_sequences(ids[:n], tok.pad_token_id, side="left")
        with torch.inference_mode(), sdpa_kernels(settings.sdpa_kernel):
            model(input_ids.to(dev), mask.to(dev), px[:n], reduction=settings.reduction, use_cache=True,
                  padding_side="left", attn_backend=settings.attn_impl, last_logits_only=True)

    print(f"{dev}; {b.dtype}; sdpa kernel {settings.sdpa_kernel}; "
          f"reduction {settings.reduction.method if settings.reduction else 'none'}")
    for n in args.batch_sizes:
        prefill(n)
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            prefill(n)
        sync(dev)
        ms = 1000 * (time.perf_counter() - t0) / args.repeats
        print(f"batch {n:>3}: prefill {ms:8.2f} ms/batch {ms / n:8.2f} ms/sample")
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        prefill(big)
        sync(dev)
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=48))


if __name__ == "__main__":
    main()
