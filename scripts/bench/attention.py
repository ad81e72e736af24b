"""Attention cost of RESTORE's calibration vs plain causal SDPA, measured side by side.

    python scripts/bench/attention.py [--repeats 20] [--threads 2]

Prints, per shape: plain causal SDPA, dense-bias SDPA (the reference implementation's way) and our
calibrated backends (flex; eager for reference), each as median ms per layer call and ratio to plain.
The per-forward set-up (block mask, distance table; shared by all layers) is reported separately
and, amortised over the model's layers, included in the "per layer incl. set-up" column.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from llava_restore.model.attention import AttnContext, attention, _flex_parts

SHAPES = [  # (label, prefix, n_vis, suffix, heads, head_dim, layers)
    ("7B  n=64 ", 35, 64, 40, 32, 128, 32),
    ("7B  n=576", 35, 576, 40, 32, 128, 32),
    ("play n=64 ", 35, 64, 40, 4, 32, 4),
    ("play n=576", 35, 576, 40, 4, 32, 4),
]


def _time(fn, repeats):
    fn()
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def make_ctx(backend, P, n, S, N=576, head_dim=128):
    L = P + n + S
    pos = torch.cat([torch.arange(P), P + torch.linspace(0, N - 1, n).floor(), P + N + torch.arange(S)]).float()[None]
    vis = torch.zeros(1, L, dtype=torch.bool)
    vis[:, P:P + n] = True
    log_size = torch.where(vis, torch.full((1, L), math.log(N / n)), torch.zeros(1, L))
    return AttnContext(key_valid=torch.ones(1, L, dtype=torch.bool), query_pos=pos, key_pos=pos, backend=backend,
                       key_log_size=log_size, key_log_size_l0=log_size, distance=True, c=2.0,
                       rope_theta=10000.0, head_dim=head_dim)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; fp32 on CPU, bf16 on GPU; B=1")
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    hdr = f"{'shape':<11} {'L':>4} | {'plain':>8} | {'dense-bias':>10} {'x':>5} | {'flex':>8} {'x':>5} | {'flex+setup':>10} {'x':>5} | {'eager':>8} {'x':>5}"
    print(hdr)
    print("-" * len(hdr))
    for label, P, n, S, H, d, layers in SHAPES:
        L = P + n + S
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, H, L, d, device=dev, dtype=dtype) for _ in range(3))
        plain = _time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), args.repeats)
        ctx_s = make_ctx("sdpa", P, n, S, head_dim=d)
        ctx_s = AttnContext(**{**ctx_s.__dict__, "key_valid": ctx_s.key_valid.to(dev), "query_pos": ctx_s.query_pos.to(dev),
                               "key_pos": ctx_s.key_pos.to(dev), "key_log_size": ctx_s.key_log_size.to(dev),
                               "key_log_size_l0": ctx_s.key_log_size_l0.to(dev), "_dense": {}, "_flex": {}})
        bias = ctx_s.dense_bias(1, dtype)
        dense = _time(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias), args.repeats)
        ctx_f = AttnContext(**{**ctx_s.__dict__, "backend": "flex", "_dense": {}, "_flex": {}})
        flex = _time(lambda: attention(q, k, v, ctx_f, 1), args.repeats)

        def setup():
            c = AttnContext(**{**ctx_s.__dict__, "backend": "flex", "_dense": {}, "_flex": {}})
            _flex_parts(c, 1)

        setup_ms = _time(setup, max(3, args.repeats // 4))
        flex_setup = flex + setup_ms / layers
        ctx_e = AttnContext(**{**ctx_s.__dict__, "backend": "eager", "_dense": {}, "_flex": {}})
        ctx_e.dense_bias(1, torch.float32)
        eager = _time(lambda: attention(q, k, v, ctx_e, 1), max(3, args.repeats // 2))
        print(f"{label:<11} {L:>4} | {plain:8.2f} | {dense:10.2f} {dense / plain:5.2f} | {flex:8.2f} {flex / plain:5.2f} | "
              f"{flex_setup:10.2f} {flex_setup / plain:5.2f} | {eager:8.2f} {eager / plain:5.2f}")
    print("ms per layer call (median); x = ratio to plain causal SDPA; set-up amortised over the model's layers")


if __name__ == "__main__":
    main()
