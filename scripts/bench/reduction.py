"""Time the base pruners (Stage A) and Stage-B anchor selection at LLaVA-1.5-7B shapes.

    python scripts/bench/reduction.py [--n-vis 64] [--repeats 7] [--device cpu]

Shapes: B=1, N=576 patches, D=4096 projected features, Dv=1024 pre-projector features.
Each line is the median of --repeats timed calls after one warm-up.  Base pruners are timed at
the full budget n (the published baseline) and at n_keep = n // 2 (their Stage A under RESTORE).
Anchor selection is timed on the M = N - n_keep pruned tokens with n - n_keep anchors; its ratio
is given to each main base pruner's time at n.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from llava_restore.reduction import (
    ANCHOR_RULES,
    anchor_merge,
    divprune_select,
    holov_select,
    random_select,
    tome_partition,
    uniform_select,
    vispruner_select,
    visionzip_partition,
)


def timed(fn, repeats: int, device: str) -> float:
    """Median wall time in ms."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-vis", type=int, default=64)
    ap.add_argument("--n-tokens", type=int, default=576)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--vis-dim", type=int, default=1024)
    ap.add_argument("--key-dim", type=int, default=64, help="CLIP ViT-L's head dim (VisionZip's similarity keys)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    g = torch.Generator().manual_seed(args.seed)
    N, n = args.n_tokens, args.n_vis
    x = torch.randn(1, N, args.dim, generator=g).to(args.device)  # (1, N, D)
    v = torch.randn(1, N, args.vis_dim, generator=g).to(args.device)  # (1, N, Dv)
    a = torch.randn(1, N, generator=g).softmax(-1).to(args.device)  # (1, N)
    keys = torch.randn(1, N, args.key_dim, generator=g).to(args.device)  # (1, N, d) head-mean tower keys
    n_keep = n // 2
    n_merge = n - n_keep
    M = N - n_keep
    y = x[:, :M]  # (1, M, D) stand-in for the pruned tokens
    pos = torch.arange(M, device=args.device).unsqueeze(0)

    print(f"device={args.device} threads={torch.get_num_threads()} B=1 N={N} D={args.dim} Dv={args.vis_dim} "
          f"n={n} n_keep={n_keep}  median of {args.repeats}")
    def pruners(k):
        return {
            "divprune": lambda: divprune_select(x, k),
            "vispruner": lambda: vispruner_select(v, a, k),
            "holov": lambda: holov_select(x, a, k),
            # as the official code runs it: CLS among the dominant tokens, similarity on the tower's keys
            "visionzip": lambda: visionzip_partition(keys, a, max(k, 2), 54 / 64, include_cls=True),
            "random": lambda: random_select(1, N, k, 0, args.device),
            "uniform": lambda: uniform_select(N, k, None, args.device),
            "tome": lambda: tome_partition(x, max(k, 1)),
        }

    prune_ms = {}
    print(f"{'base method':<12}{f'ms @ n={n}':>12}{f'ms @ n_keep={n_keep}':>18}")
    for (name, fn), fn_keep in zip(pruners(n).items(), pruners(n_keep).values()):
        prune_ms[name] = timed(fn, args.repeats, args.device)
        keep_ms = timed(fn_keep, args.repeats, args.device)
        print(f"{name:<12}{prune_ms[name]:>12.2f}{keep_ms:>18.2f}")

    main_methods = ["divprune", "vispruner", "holov"]
    header = "".join(f"{'/' + m:>12}" for m in main_methods)
    print(f"\nanchor selection + assignment ({n_merge} anchors of M={M}); ratio = anchor ms / pruner ms @ n={n}")
    print(f"{'anchor rule':<12}{'ms':>10}{header}")
    for rule in sorted(ANCHOR_RULES):
        ms = timed(lambda: anchor_merge(y, n_merge, rule, token_index=pos), args.repeats, args.device)
        ratios = "".join(f"{ms / prune_ms[m]:>12.3f}" for m in main_methods)
        print(f"{rule:<12}{ms:>10.2f}{ratios}")


if __name__ == "__main__":
    main()
