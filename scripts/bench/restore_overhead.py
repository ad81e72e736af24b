"""Where RESTORE's prefill overhead over plain pruning goes (issue 20), as paired ratios.

For each base method at n: the plain prefill, the RESTORE prefill, and two RESTORE prefills whose
Stage-B anchor selection is replaced (inside this script only, with ``unittest.mock.patch``) by

- ``no-anchor``: the memoised result of a real call (Stage B's selection costs nothing; everything
  else in RESTORE, its Stage A at n/2, the merge, the positions and the calibrated attention, runs);
- ``gemm-only``: the memoised result plus the one M x M x D similarity matmul the density-peaks
  rules cannot avoid (normalise, then ``Yn @ Yn^T``), i.e. the floor of an exact Stage B.

Each repeat times all four back to back (rotating the order), and the report gives the median of
the per-repeat ratios to plain, so a slow phase of a shared machine cancels.

    python scripts/bench/restore_overhead.py --threads 1 [--methods divprune,vispruner,holov] [--n-vis 64]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llava_restore.analysis.efficiency import make_variants, prompt_batch  # noqa: E402
from llava_restore.reduction import base  # noqa: E402
from llava_restore.reduction.common import normalize  # noqa: E402


class MemoisedStageB:
    """Stand-ins for ``anchor_merge``: the real result once per input shape, then replayed."""

    def __init__(self, real):
        self.real, self.memo = real, {}

    def replay(self, y, n, rule, **kw):
        key = (tuple(y.shape), n, rule)
        if key not in self.memo:
            self.memo[key] = self.real(y, n, rule, **kw)
        return self.memo[key]

    def gemm_only(self, y, n, rule, **kw):
        yn = normalize(y)
        _ = yn @ yn.transpose(1, 2)  # (B, M, M): the similarity every density-peaks rule needs
        return self.replay(y, n, rule, **kw)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=str(REPO / "playground/cache/llava-playground"))
    ap.add_argument("--question-file", default=str(REPO / "playground/data/eval/gqa/llava_gqa_testdev_balanced.jsonl"))
    ap.add_argument("--image-folder", default=str(REPO / "playground/data/eval/gqa/data/images"))
    ap.add_argument("--methods", default="divprune,vispruner,holov")
    ap.add_argument("--n-vis", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--conv-mode", default="vicuna_v1", help="as analysis.efficiency's --conv-mode")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from llava_restore.model.builder import load_pretrained_model  # noqa: PLC0415

    tok, model, proc, _ = load_pretrained_model(args.model_path, device="cpu", torch_dtype=torch.float32)
    model.eval()
    ids, mask, pixels = prompt_batch(tok, proc, model, args.question_file, args.image_folder, 1, args.conv_mode,
                                     torch.device("cpu"))[:3]
    kinds = ("restore", "no-anchor", "gemm-only")
    print(f"# RESTORE overhead over plain pruning at n={args.n_vis} ({args.model_path}, {args.threads} thread(s), "
          f"process clock, median of {args.repeats} per-repeat ratios)\n")
    print("| method | plain ms | RESTORE / plain | no Stage-B selection / plain | + its M x M x D matmul only / plain |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for method in [m for m in args.methods.split(",") if m]:
            plain_v, restore_v = make_variants([method], [args.n_vis], [False, True], [])[1:]
            stage_b = MemoisedStageB(base.anchor_merge)  # one per method: its own Stage-B result is replayed
            stand_ins = {"restore": None, "no-anchor": stage_b.replay, "gemm-only": stage_b.gemm_only}

            def prefill(cfg):
                return model(ids, mask, pixels, reduction=cfg, use_cache=True, padding_side="left")

            jobs = [("plain", plain_v.cfg, None)] + [(k, restore_v.cfg, f) for k, f in stand_ins.items()]
            times = {name: [] for name, _, _ in jobs}
            for r in range(args.repeats + 3):
                for name, cfg, fn in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:  # rotate the order
                    with mock.patch.object(base, "anchor_merge", fn) if fn else contextlib.nullcontext():
                        t = time.process_time()
                        prefill(cfg)
                        dt = time.process_time() - t
                    if r >= 3:
                        times[name].append(dt)
            ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["plain"])) for k in kinds}
            print(f"| {method} | {1e3 * statistics.median(times['plain']):.2f} | {ratio['restore']:.3f} | "
                  f"{ratio['no-anchor']:.3f} | {ratio['gemm-only']:.3f} |")


if __name__ == "__main__":
    main()
