"""Attention cost of RESTORE's calibration vs plain causal SDPA, measured side by side.

    python scripts/bench/attention.py [--repeats 20] [--threads 1]               # CPU, fp32
    python scripts/bench/attention.py --device cuda --dtype bfloat16 --shapes 7b \
        --kernels auto efficient cudnn --json out.json                           # GPU, 7B heads

Per shape (B = 1; prefix P, n visual tokens, suffix S; L = P + n + S; 7B: L = 139 and 651):
- ``plain``: causal SDPA without bias (what plain pruning runs);
- ``sdpa[k]``: our sdpa backend (one dense bias per forward, in the query dtype) with PyTorch's SDPA
  restricted to kernel k (``--kernels``; ``auto`` = PyTorch's choice);
- ``flex``: FlexAttention with score_mod + block mask, per layer call; ``flex+setup`` adds the
  per-forward set-up (block mask, tables) amortised over the model's layers;
- ``bias``: building the dense bias once per forward, amortised over the layers;
- ``fold``: the size term alone, folded exactly into the head dimension (q' = [q, sqrt(d), 0..],
  k' = [k, log s, 0..], padded to a multiple of 8 so flash kernels apply) and run as *causal* SDPA
  without a mask; for comparison with ``sdpa`` on the size term alone (``size-only``).  It cannot
  carry the distance term (not a per-key quantity), so it is a candidate, not a backend;
- ``eager``: the reference formula.
Each entry: median ms per layer call and its ratio to ``plain``; max |diff| to eager (fp32 eager on the
same rounded inputs) is checked for every candidate and printed when it exceeds the backend tolerance.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the checkout, installed or not

from llava_restore.model.attention import AttnContext, _flex_parts, attention, sdpa_kernels  # noqa: E402

SHAPES = [  # (label, prefix, n_vis, suffix, heads, head_dim, layers)
    ("7B n=64", 35, 64, 40, 32, 128, 32),
    ("7B n=576", 35, 576, 40, 32, 128, 32),
    ("play n=64", 35, 64, 40, 4, 32, 4),
    ("play n=576", 35, 576, 40, 4, 32, 4),
]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-3}  # mean |diff| to eager


def _time(fn, repeats, device):
    for _ in range(2):
        fn()
    ts = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def make_ctx(backend, P, n, S, N=576, head_dim=128, device="cpu", size=True, dist=True):
    L = P + n + S
    pos = torch.cat([torch.arange(P), P + torch.linspace(0, N - 1, n).floor(), P + N + torch.arange(S)]).float()[None]
    vis = torch.zeros(1, L, dtype=torch.bool)
    vis[:, P:P + n] = True
    log_size = torch.where(vis, torch.full((1, L), math.log(N / n)), torch.zeros(1, L))
    return AttnContext(key_valid=torch.ones(1, L, dtype=torch.bool, device=device), query_pos=pos.to(device),
                       key_pos=pos.to(device), backend=backend,
                       key_log_size=log_size.to(device) if size else None,
                       key_log_size_l0=log_size.to(device) if size else None, distance=dist, c=2.0,
                       rope_theta=10000.0, head_dim=head_dim)


def fold_size(q, k, log_size):
    """Exact: q'.k' / sqrt(d) = q.k / sqrt(d) + log s_j.  q, k (B, H, L, d), log_size (B, L)."""
    B, H, L, d = q.shape
    pad = 8 - (d + 1) % 8 if (d + 1) % 8 else 0
    one = torch.full((B, H, L, 1), math.sqrt(d), dtype=q.dtype, device=q.device)
    ls = log_size[:, None, :, None].to(k.dtype).expand(B, H, L, 1)
    zq = q.new_zeros(B, H, L, pad)
    return torch.cat([q, one, zq], -1), torch.cat([k, ls, zq], -1)


def bench_shape(label, P, n, S, H, d, layers, dev, dtype, kernels, repeats):
    L = P + n + S
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, H, L, d, generator=g).to(dev, dtype) for _ in range(3))
    row = {"shape": label, "L": L, "heads": H, "head_dim": d, "dtype": str(dtype).replace("torch.", "")}
    row["plain"] = _time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeats, dev)
    ref = attention(q.float(), k.float(), v.float(), make_ctx("eager", P, n, S, head_dim=d, device=dev), 1)
    errs = {}
    for kern in kernels:
        ctx = make_ctx("sdpa", P, n, S, head_dim=d, device=dev)
        try:
            with sdpa_kernels(kern):
                out = attention(q, k, v, ctx, 1)
                row[f"sdpa[{kern}]"] = _time(lambda: attention(q, k, v, ctx, 1), repeats, dev)
            errs[f"sdpa[{kern}]"] = (out.float() - ref).abs().mean().item()
        except RuntimeError as e:  # a kernel that does not take this input (e.g. flash with a mask)
            row[f"sdpa[{kern}]"] = None
            row[f"sdpa[{kern}] error"] = str(e).splitlines()[0][:120]
    row["bias"] = _time(lambda: make_ctx("sdpa", P, n, S, head_dim=d, device=dev).dense_bias(1, dtype),
                        max(3, repeats // 4), dev) / layers
    ctx_f = make_ctx("flex", P, n, S, head_dim=d, device=dev)
    out = attention(q, k, v, ctx_f, 1)
    errs["flex"] = (out.float() - ref).abs().mean().item()
    row["flex"] = _time(lambda: attention(q, k, v, ctx_f, 1), repeats, dev)
    row["flex+setup"] = row["flex"] + _time(lambda: _flex_parts(make_ctx("flex", P, n, S, head_dim=d, device=dev), 1),
                                            max(3, repeats // 4), dev) / layers
    # the size term alone: dense bias vs folded into the head dimension
    ctx_so = make_ctx("sdpa", P, n, S, head_dim=d, device=dev, dist=False)
    ref_so = attention(q.float(), k.float(), v.float(), make_ctx("eager", P, n, S, head_dim=d, device=dev, dist=False), 1)
    row["size-only sdpa"] = _time(lambda: attention(q, k, v, ctx_so, 1), repeats, dev)
    ls = ctx_so.key_log_size

    def folded():
        qf, kf = fold_size(q, k, ls)
        return F.scaled_dot_product_attention(qf, kf, F.pad(v, (0, qf.shape[-1] - d)), is_causal=True,
                                              scale=1 / math.sqrt(d))[..., :d]

    errs["fold"] = (folded().float() - ref_so).abs().mean().item()
    row["size-only fold"] = _time(folded, repeats, dev)
    ctx_e = make_ctx("eager", P, n, S, head_dim=d, device=dev)
    row["eager"] = _time(lambda: attention(q, k, v, ctx_e, 1), max(3, repeats // 2), dev)
    row["mean_abs_diff_to_eager"] = errs
    row["within_tolerance"] = {name: e <= TOL[dtype] for name, e in errs.items()}
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--shapes", choices=["all", "7b", "play"], default="all")
    ap.add_argument("--kernels", nargs="+", default=["auto"], help="SDPA kernels for the sdpa backend (--sdpa-kernel names)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float32" if dev.type == "cpu" else "bfloat16"))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {dtype}; B=1; ms per layer call (median of {args.repeats})")
    shapes = [s for s in SHAPES if args.shapes == "all" or s[0].lower().startswith(args.shapes)]
    rows = []
    for spec in shapes:
        row = bench_shape(*spec, dev, dtype, args.kernels, args.repeats)
        rows.append(row)
        cols = [c for c in row if c not in ("shape", "L", "heads", "head_dim", "dtype", "mean_abs_diff_to_eager",
                                            "within_tolerance") and not c.endswith("error")]
        print(f"\n{row['shape']} (L={row['L']}, {row['heads']} heads x {row['head_dim']})")
        for c in cols:
            val = row[c]
            if val is None:
                print(f"  {c:<16} n/a ({row.get(c + ' error', '')})")
            else:
                print(f"  {c:<16} {val:8.3f} ms  {val / row['plain']:5.2f}x plain")
        bad = [k for k, ok in row["within_tolerance"].items() if not ok]
        print("  mean |diff| to eager: " + ", ".join(f"{k} {e:.1e}" for k, e in row["mean_abs_diff_to_eager"].items())
              + ("" if not bad else f"  OUTSIDE TOLERANCE: {bad}"))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": name, "torch": torch.__version__, "dtype": str(dtype), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
