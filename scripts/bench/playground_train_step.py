"""Playground stage-2 training step: float32 vs bfloat16 autocast, measured side by side.

    python scripts/bench/playground_train_step.py [--repeats 6] [--threads 2]

One forward + backward + AdamW step of the playground model (``PlaygroundTrainConfig().model``,
ViT frozen as in stage 2), batch 16, on synthetic token ids and images: ``--text`` text tokens per
record (about 8 turns) plus either all 576 visual tokens or a foreground-sized random subset
(``--keep``, kept at their original positions as the trainer's ``foreground_steps`` does). The two
precisions alternate within each repeat, so machine noise hits both alike. Prints median seconds
per step, the bf16/fp32 speed-up, and the stage-2 time the default schedule (``foreground_steps``
steps on the subset, the rest on all tokens) would take in each precision.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the checkout, installed or not

from llava_restore.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from llava_restore.playground.train import PlaygroundTrainConfig  # noqa: E402
from llava_restore.tools.make_tiny import build_tiny  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--text", type=int, default=350, help="text tokens per record")
    ap.add_argument("--keep", type=int, default=140, help="visual tokens kept in a foreground step")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PlaygroundTrainConfig()
    torch.manual_seed(0)
    words = ["what", "color", "is", "the", "red", "square", "circle", "left", "of", "answer", "yes", "no"]
    _, model, _ = build_tiny(cfg.model, seed=0, tokenizer_texts=[" ".join(words)] * 20, init_std=cfg.decoder_init_std)
    model.get_vision_tower().requires_grad_(False)
    model.train()
    n_vocab, n_patches = model.model.embed_tokens.num_embeddings, model.get_vision_tower().num_patches
    B = args.batch
    ids = torch.randint(3, n_vocab, (B, args.text))  # (B, T)
    ids[:, 5] = IMAGE_TOKEN_INDEX
    labels = ids.clone()
    labels[:, :20] = IGNORE_INDEX
    labels[:, 5] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    images = torch.randn(B, 3, cfg.model.image_size, cfg.model.image_size)
    gen = torch.Generator().manual_seed(0)
    keep = [torch.randperm(n_patches, generator=gen)[:args.keep].sort().values for _ in range(B)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(dtype, visual_keep):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            out = model(ids, mask, images, labels=labels, visual_keep=visual_keep)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    modes = [(d, name, k) for name, k in (("all 576", None), (f"keep {args.keep}", keep)) for d in ("float32", "bfloat16")]
    for d, _, k in modes:  # warm-up
        step(d, k)
    times = {(d, name): [] for d, name, _ in modes}
    for _ in range(args.repeats):
        for d, name, k in modes:
            times[(d, name)].append(step(d, k))
    med = {key: statistics.median(v) for key, v in times.items()}
    print(f"threads {torch.get_num_threads()}, batch {B}, {args.text} text tokens, {args.repeats} repeats (median s/step)")
    for name in ("all 576", f"keep {args.keep}"):
        f32, b16 = med[("float32", name)], med[("bfloat16", name)]
        print(f"  {name:>10}: float32 {f32:.3f}  bfloat16 {b16:.3f}  speed-up {f32 / b16:.2f}x")
    n_fg, n_full = min(cfg.foreground_steps, cfg.steps), max(0, cfg.steps - cfg.foreground_steps)
    for d in ("float32", "bfloat16"):
        total = n_fg * med[(d, f"keep {args.keep}")] + n_full * med[(d, "all 576")]
        print(f"  stage 2 of the default schedule ({n_fg} foreground + {n_full} full steps), {d}: {total:.0f} s "
              "(compute only; data loading not included)")


if __name__ == "__main__":
    main()
