"""Issue 20's selection fast paths against the previous implementations, side by side in one run.

    python scripts/bench/selection_fastpath.py [--threads 1] [--repeats 30] [--batch-sizes 1 8]

The previous DivPrune, VisPruner and density-peak anchor code is the verbatim copy kept as the
reference in tests/test_selection_fastpath.py.  LLaVA shapes: N = 576 tokens, projected D = 4096
(--dim), pre-projector Dv = 1024 (--vis-dim); n = 64, RESTORE's Stage A at 32 and 32 anchors on the
M = 544 others.  Per line: median ms (process clock) of previous and current, and their ratio;
every pair is checked to choose the same tokens.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from test_selection_fastpath import prev_anchor_merge, prev_divprune_select, prev_vispruner_select  # noqa: E402

from llava_restore.reduction.anchors import anchor_merge  # noqa: E402
from llava_restore.reduction.divprune import divprune_select  # noqa: E402
from llava_restore.reduction.vispruner import vispruner_select  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--vis-dim", type=int, default=1024)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    clock = time.process_time if dev.type == "cpu" else time.perf_counter
    N, n = 576, 64
    print(f"{dev} ({torch.get_num_threads()} threads), N={N}, D={args.dim}, Dv={args.vis_dim}; median ms of {args.repeats}")
    print(f"{'B':>3} {'job':<28} {'previous':>9} {'current':>9} {'speed-up':>9}")
    rows = []
    for B in args.batch_sizes:
        g = torch.Generator().manual_seed(B)
        x = torch.randn(B, N, args.dim, generator=g).to(dev)
        v = torch.randn(B, N, args.vis_dim, generator=g).to(dev)
        cls = torch.rand(B, N, generator=g).to(dev)
        y = x[:, : N - n // 2]
        jobs = {
            "divprune k=64": (lambda: prev_divprune_select(x, n), lambda: divprune_select(x, n)),
            "divprune k=32 (Stage A)": (lambda: prev_divprune_select(x, n // 2), lambda: divprune_select(x, n // 2)),
            "vispruner k=64": (lambda: prev_vispruner_select(v, cls, n), lambda: vispruner_select(v, cls, n)),
            "vispruner k=32 (Stage A)": (lambda: prev_vispruner_select(v, cls, n // 2), lambda: vispruner_select(v, cls, n // 2)),
            "anchors reference 32 of 544": (lambda: prev_anchor_merge(y, n // 2), lambda: anchor_merge(y, n // 2)),
        }
        for name, (old, new) in jobs.items():
            a, b = old(), new()
            same = all(torch.equal(p, q) for p, q in zip(a, b)) if isinstance(a, tuple) else torch.equal(a, b)
            if not same:
                raise SystemExit(f"{name}: the current code chose other tokens than the previous one")
            ts = {"old": [], "new": []}
            for _ in range(args.repeats):  # alternate, so both see the same machine load
                for key, fn in (("old", old), ("new", new)):
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    t0 = clock()
                    fn()
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    ts[key].append(1e3 * (clock() - t0))
            o, c = statistics.median(ts["old"]), statistics.median(ts["new"])
            print(f"{B:>3} {name:<28} {o:9.2f} {c:9.2f} {o / c:8.2f}x")
            rows.append({"B": B, "job": name, "previous_ms": o, "current_ms": c})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": str(dev), "dim": args.dim, "vis_dim": args.vis_dim, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
