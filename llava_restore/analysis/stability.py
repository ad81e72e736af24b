"""How far each reduction's choice moves under rounding-sized noise on its inputs.

Two machines (or two CPU kernel paths: ``ATEN_CPU_CAPABILITY=avx2`` against ``avx512``) give the
vision tower's outputs to within ~1e-6 relative, not bit for bit. A selection with near-ties can
then choose other tokens, and the answers built on them change. This tool measures that in one
process: it runs every configuration on the real inputs, then again with each float input
(projected features, pre-projector features, CLS attention, attention keys, CLS feature) scaled
by (1 + eps * z), z ~ N(0, 1) from a seeded generator, and compares the two member maps.

A patch counts as changed when its group differs: the set of patches it is merged with (itself
alone when kept as it is), or being dropped rather than kept. Swapping one kept token for another
changes two patches. ``eps = 0`` reruns the same inputs: every method must give 0 there.

    python -m llava_restore.analysis.stability --model-path playground/cache/llava-playground \\
        --question-file playground/data/eval/gqa/llava_gqa_testdev_balanced.jsonl \\
        --image-folder playground/data/eval/gqa/data/images --methods divprune,vispruner,holov \\
        --n-vis 64 --samples 200 --eps 1e-6 --trials 2

Writes ``stability.json`` (with each configuration resolved) and ``stability.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from llava_restore.eval.generate import cli_entry
from llava_restore.reduction import known_reducers, needed_inputs, reduce_visual_tokens
from llava_restore.reduction.config import ReductionConfig

from .efficiency import variants_from_cli

PERTURBED = ("vis_feats", "cls_attn", "attn_keys", "vis_cls")  # the float inputs besides the projected features


def changed_patches(ref: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """ref, new (B, N) member maps (group id, -1 = dropped) -> (B,) long: the patches whose group
    (the set of patches sharing its id, or dropped) differs.  Group ids may be relabelled freely."""
    if ref.shape != new.shape or ref.dim() != 2:
        raise ValueError(f"changed_patches: member maps of shape (B, N), got {tuple(ref.shape)} and {tuple(new.shape)}")

    def together(m: torch.Tensor) -> torch.Tensor:  # (B, N, N) [i, j]: j is in i's group
        return (m.unsqueeze(2) == m.unsqueeze(1)) & (m >= 0).unsqueeze(2)

    return (together(ref) != together(new)).any(dim=-1).sum(dim=-1)


def perturb(feats: torch.Tensor, inputs: dict, eps: float, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Each float tensor x of (feats, inputs[PERTURBED]) -> x * (1 + eps * z), z ~ N(0, 1) drawn on the
    CPU from ``gen`` (the same draws on every device).  A multiplicative change keeps CLS attention >= 0."""

    def noisy(x: torch.Tensor) -> torch.Tensor:
        z = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
        return x * (1 + eps * z)

    out = dict(inputs)
    for name in PERTURBED:
        if out.get(name) is not None:
            out[name] = noisy(out[name])
    return noisy(feats), out


def stability_counts(feats: torch.Tensor, inputs: dict, cfg: ReductionConfig, eps: float, trials: int,
                     seed: int) -> dict:
    """One batch: counts for ``cfg`` over ``trials`` perturbations (trial t draws from seed + t)."""
    ref = reduce_visual_tokens(feats, cfg, **inputs).source  # (B, N)
    again = reduce_visual_tokens(feats, cfg, **inputs).source
    B = ref.shape[0]
    counts = {"samples": B * trials, "samples_changed": 0, "patches_changed": 0,
              "repeat_identical": bool(torch.equal(ref, again))}
    for t in range(trials):
        p_feats, p_inputs = perturb(feats, inputs, eps, torch.Generator().manual_seed(seed + t))
        changed = changed_patches(ref, reduce_visual_tokens(p_feats, cfg, **p_inputs).source)  # (B,)
        counts["samples_changed"] += int((changed > 0).sum())
        counts["patches_changed"] += int(changed.sum())
    return counts


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--question-file", required=True, help="the first --samples questions' images are used")
    ap.add_argument("--image-folder", required=True)
    ap.add_argument("--conv-mode", default="vicuna_v1")
    ap.add_argument("--methods", default="divprune,vispruner,holov", help="comma-separated pre-LLM methods")
    ap.add_argument("--n-vis", default="64")
    ap.add_argument("--restore", choices=["both", "on", "off"], default="both")
    ap.add_argument("--reduction-opts", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eps", type=float, default=1e-6, help="relative noise scale (0: rerun the same inputs)")
    ap.add_argument("--trials", type=int, default=2, help="perturbations per sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/analysis/stability")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.eps < 0 or args.trials < 1 or args.samples < 1 or args.batch_size < 1:
        raise SystemExit(f"error: need --eps >= 0, --trials >= 1, --samples >= 1 and --batch-size >= 1 "
                         f"(got {args.eps}, {args.trials}, {args.samples}, {args.batch_size})")
    methods = [m for m in args.methods.split(",") if m]
    if not methods:
        raise SystemExit(f"error: --methods is empty; known pre-LLM methods: {known_reducers()}")
    outside = [m for m in methods if m not in known_reducers()]
    if outside:
        raise SystemExit(f"error: --methods {','.join(outside)}: not a pre-LLM method; known: {known_reducers()}")
    if args.threads:
        torch.set_num_threads(args.threads)
    restore = {"both": [False, True], "on": [True], "off": [False]}[args.restore]
    variants = variants_from_cli(",".join(methods), args.n_vis, restore, args.reduction_opts)[1:]  # [0]: full tokens
    from llava_restore.model.builder import load_pretrained_model  # noqa: PLC0415

    from .attention import load_batches  # noqa: PLC0415

    device = torch.device(args.device)
    tok, model, proc, _ = load_pretrained_model(args.model_path, device=str(device), torch_dtype=torch.float32)
    model.eval()
    totals = {v.name: None for v in variants}
    with torch.inference_mode():
        for b, (ids, mask, pixels, *_) in enumerate(load_batches(
                args.question_file, args.image_folder, tok, proc, model.config.image_aspect_ratio, args.conv_mode,
                args.samples, args.batch_size, device)):
            encoded = {}  # one tower pass per batch for each set of inputs the configurations need
            for v in variants:
                need = needed_inputs(v.cfg)
                if need not in encoded:
                    encoded[need] = model.encode_for_reduction(pixels, v.cfg)
                feats, inputs = encoded[need]
                seed = args.seed + b * args.trials  # trial t of batch b draws from its own seed
                c = stability_counts(feats, inputs, v.cfg, args.eps, args.trials, seed)
                t = totals[v.name]
                totals[v.name] = c if t is None else {
                    k: (t[k] and c[k]) if k == "repeat_identical" else t[k] + c[k] for k in t}
    N = model.get_vision_tower().num_patches
    rows = []
    for v in variants:
        t = totals[v.name]
        rows.append({"name": v.name, "method": v.method, "n_vis": v.cfg.n_vis, "restore": bool(v.cfg.restore),
                     "config": asdict(v.cfg), **t,
                     "samples_changed_pct": 100.0 * t["samples_changed"] / t["samples"],
                     "patches_changed_per_sample": t["patches_changed"] / t["samples"]})
    meta = {"model": args.model_path, "question_file": args.question_file, "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "patches": N, "eps": args.eps, "trials": args.trials, "seed": args.seed, "argv": vars(args)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stability.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1), encoding="utf-8")
    md = [f"# Selection stability: {args.model_path}", "",
          f"Each float input scaled by (1 + {args.eps:g} z), z ~ N(0, 1), {args.trials} draw(s) per image, on "
          f"{rows[0]['samples'] // args.trials} images ({meta['device']}, kernels {meta['cpu_capability']}). "
          f"A patch changes when its group (its merge partners, or being dropped) differs; N = {N}.", "",
          "| config | images changed % | patches changed / image | rerun identical |", "|---|---|---|---|"]
    md += [f"| {r['name']} | {r['samples_changed_pct']:.1f} | {r['patches_changed_per_sample']:.2f} | "
           f"{'yes' if r['repeat_identical'] else 'NO'} |" for r in rows]
    (out / "stability.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    print(f"\nwrote {out / 'stability.json'} and {out / 'stability.md'}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    cli_entry(main)  # a missing file or image, or an n_vis above N: one "error: ..." line
