"""The sdpa/eager bias build over an eval-like stream of prompts, side by side in one run (issue 20).

Each prompt: `--before` text tokens, n retained visual positions (random, sorted, out of `--n-patches`, default LLaVA-1.5's (336/14)^2 = 576),
then 5..45 text tokens (41 lengths, as the questions of an eval vary). Per prompt, the two bias
variants RESTORE's default needs (layer 0's uniform sizes, the true sizes) are built:

- warm: as an eval runs it, the memoised tables (``offset_table``, ``future_keys``) reused across
  prompts (the table covers a power-of-two span, so nearby lengths share it);
- cold: every memo cleared before each prompt, i.e. a table miss per prompt. That is what the
  previous key, the exact offset range, gave such a stream (41 lengths against 16 cached ranges).

    python scripts/bench/bias_build.py [--head-dim 128] [--n-vis 64] [--n-patches 576] [--prompts 100] [--rounds 5]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llava_restore.model import attention  # noqa: E402
from llava_restore.model.attention import AttnContext  # noqa: E402


def contexts(n_prompts: int, n_vis: int, n_patches: int, before: int, head_dim: int, gen: torch.Generator) -> list[AttnContext]:
    out = []
    for i in range(n_prompts):
        after = 5 + (i * 7) % 41
        vis = torch.sort(torch.randperm(n_patches, generator=gen)[:n_vis]).values.float() + before
        pos = torch.cat([torch.arange(before).float(), vis, before + n_patches + torch.arange(after).float()])[None]
        L = pos.shape[1]
        log_size = torch.zeros(1, L)
        log_size[0, before:before + n_vis] = torch.rand(n_vis, generator=gen) * 2
        out.append(AttnContext(key_valid=torch.ones(1, L, dtype=torch.bool), query_pos=pos, key_pos=pos,
                               key_log_size=log_size, key_log_size_l0=torch.zeros_like(log_size) + math.log(n_patches / n_vis),
                               distance=True, head_dim=head_dim))
    return out


def clear_memos() -> None:
    attention.offset_table.cache_clear()
    attention.distance_table.cache_clear()
    attention._future_keys_cached.cache_clear()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--n-vis", type=int, default=64)
    ap.add_argument("--n-patches", type=int, default=(336 // 14) ** 2, help="visual tokens before reduction (LLaVA-1.5: 576)")
    ap.add_argument("--before", type=int, default=35, help="text tokens before the image (vicuna_v1: 35)")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if not 0 < args.n_vis <= args.n_patches:
        ap.error(f"--n-vis {args.n_vis} must be in 1..--n-patches ({args.n_patches})")
    torch.set_num_threads(args.threads)
    ctxs = contexts(args.prompts, args.n_vis, args.n_patches, args.before, args.head_dim, torch.Generator().manual_seed(0))
    times = {"warm": [], "cold": []}
    with torch.inference_mode():
        for r in range(args.rounds + 1):
            for ctx in ctxs:
                for kind in (("warm", "cold") if r % 2 else ("cold", "warm")):  # alternate: same machine load
                    if kind == "cold":
                        clear_memos()
                    ctx._dense.clear()
                    t0 = time.process_time()
                    ctx.dense_bias(0, torch.float32)
                    ctx.dense_bias(1, torch.float32)
                    if r:  # round 0 warms the memos up
                        times[kind].append(time.process_time() - t0)
    warm, cold = (1e6 * statistics.median(times[k]) for k in ("warm", "cold"))
    paired = statistics.median(c / w for c, w in zip(times["cold"], times["warm"]))
    print(f"bias build, head_dim {args.head_dim}, n_vis {args.n_vis}, {args.prompts} prompts of 41 lengths, "
          f"{args.threads} thread(s), process clock, medians")
    print(f"warm (memoised tables) {warm:.1f} us | cold (a table miss per prompt) {cold:.1f} us | "
          f"cold / warm {cold / warm:.2f} (paired {paired:.2f})")


if __name__ == "__main__":
    main()
