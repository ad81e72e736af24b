"""Time the base pruners (Stage A) and Stage-B anchor selection at LLaVA-1.5-7B shapes.

    python scripts/bench/reduction.py [--n-vis 64] [--repeats 7] [--device cpu]

Shapes: B=1, N=576 patches, D=4096 projected features, Dv=1024 pre-projector features.
Each line is the median of --repeats timed calls after one warm-up.  Base pruners are timed at
the full budget n (the published baseline) and at n_keep = n // 2 (their Stage A under RESTORE).
Anchor selection is timed on the M = N - n_keep pruned tokens with n - n_keep anchors; its ratio
is given to each main base pruner's time at n.

In-LLM methods (FastV, PDrop at their default schedules for n): a random LLaMA decoder of the
paper's depth (32 layers; width --llm-hidden, 1/8 of 7B's by default so a CPU can run it) on
prefix 35 + N visual + suffix 30 tokens, timed round-robin against the full prefill and against
a pre-LLM pruner's prefill of n visual tokens; ratios and the FLOP limits (flops.py) side by side.
--threads 1 --clock process on a shared CPU.
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

from llava_restore.analysis.flops import LlamaDims, inllm_score_flops, llm_prefill_flops, llm_prefill_flops_layers  # noqa: E402
from llava_restore.model.attention import AttnContext  # noqa: E402
from llava_restore.model.config import TextConfig  # noqa: E402
from llava_restore.model.llama import LlamaDecoder  # noqa: E402

from llava_restore.reduction import (  # noqa: E402
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
from llava_restore.reduction.config import make_reduction_config  # noqa: E402
from llava_restore.reduction.inllm import build_state  # noqa: E402


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
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--clock", choices=["wall", "process"], default="wall",
                    help="process: this process's CPU time (with --threads 1 on a shared CPU)")
    ap.add_argument("--inllm", default="fastv,pdrop,sparsevlm", help="in-LLM methods to time in a prefill ('' = none)")
    ap.add_argument("--llm-hidden", type=int, default=512)
    ap.add_argument("--llm-layers", type=int, default=32)
    ap.add_argument("--llm-heads", type=int, default=8)
    ap.add_argument("--llm-mlp", type=int, default=1376)
    ap.add_argument("--prefill-repeats", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

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

    methods = [m for m in args.inllm.split(",") if m]
    if methods:
        inllm_prefill(args, methods)


def inllm_prefill(args, methods: list[str]) -> None:
    """Prefill of a random decoder: full vs each in-LLM method at n vs n visual tokens pruned
    before the LLM, round-robin, median of --prefill-repeats."""
    torch.manual_seed(args.seed)
    t = TextConfig(hidden_size=args.llm_hidden, intermediate_size=args.llm_mlp, num_hidden_layers=args.llm_layers,
                   num_attention_heads=args.llm_heads, num_key_value_heads=args.llm_heads,
                   head_dim=args.llm_hidden // args.llm_heads, vocab_size=32)
    dec = LlamaDecoder(t).to(args.device).eval()
    with torch.no_grad():
        for p in dec.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    N, n, pre, suf = args.n_tokens, args.n_vis, 35, 30
    dims = LlamaDims.of(t)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def inputs(n_visual):
        L = pre + n_visual + suf
        h = torch.randn(1, L, t.hidden_size, device=args.device)
        valid = torch.ones(1, L, dtype=torch.bool, device=args.device)
        visual = torch.zeros_like(valid)
        visual[:, pre:pre + n_visual] = True
        pos = torch.arange(L, device=args.device, dtype=torch.float32)[None]
        return h, valid, visual, pos

    def runner(method):
        n_visual = n if method == "pruned-before-LLM" else N
        h, valid, visual, pos = inputs(n_visual)
        plain = method in ("full", "pruned-before-LLM")
        cfg = None if plain else make_reduction_config(method=method, n_vis=n).resolve()

        def go():
            ctx = AttnContext(key_valid=valid, query_pos=pos, key_pos=pos, backend="sdpa")
            hooks = None if cfg is None else build_state(cfg, t.num_hidden_layers, N, valid, visual, pos,
                                                         pos[:, -1] + 1, "left")
            with torch.no_grad():
                dec(h, pos, ctx, None, hooks)
            return hooks

        return go

    names = ["full", "pruned-before-LLM"] + methods
    fns = {m: runner(m) for m in names}
    flops, layout = {}, {}
    for m in names:
        hooks = fns[m]()  # warm-up, and the per-layer lengths
        if hooks is None:
            L = pre + (n if m == "pruned-before-LLM" else N) + suf
            flops[m], layout[m] = llm_prefill_flops(dims, L), f"{L} tokens at every layer"
        else:
            rep = hooks.report()
            lengths = rep.tokens_per_layer[0].tolist()
            score = sum(inllm_score_flops(dims, int(Lb[0]), nq, e.score_layer == e.drop_layer - 1)
                        for e, Lb, nq in rep.scored)
            flops[m] = llm_prefill_flops_layers(dims, lengths) + score
            layout[m] = f"visual/layer avg {rep.schedule.average:.1f}: " + " ".join(map(str, rep.schedule.counts))
    times = {m: [] for m in names}
    for r in range(args.prefill_repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: nobody always goes first
        for m in order:
            sync()
            t0 = clock()
            fns[m]()
            sync()
            times[m].append((clock() - t0) * 1e3)
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"\nprefill, random decoder {t.num_hidden_layers} layers x {t.hidden_size} wide, {pre} + N={N} visual + "
          f"{suf} tokens, n={n}; {args.clock} clock, threads={torch.get_num_threads()}, "
          f"median of {args.prefill_repeats} round-robin")
    print(f"{'config':<20}{'ms':>10}{'time/full':>11}{'speed-up':>10}{'FLOP limit':>12}  layout")
    for m in names:
        print(f"{m:<20}{med[m]:>10.1f}{med[m] / med['full']:>11.3f}{med['full'] / med[m]:>9.2f}x"
              f"{flops['full'] / flops[m]:>11.2f}x  {layout[m]}")


if __name__ == "__main__":
    main()
