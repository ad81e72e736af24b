"""The efficiency report: prefill latency, FLOPs, peak memory, KV cache and reduction cost.

    # the playground (CPU)
    python -m llava_restore.analysis.efficiency --model-path playground/cache/llava-playground
    # a random-weight LLaVA-1.5-7B shape on a GPU (no download)
    python -m llava_restore.analysis.efficiency --shape llava-7b --device cuda --dtype float16

For the full model and each method x n_vis x RESTORE off/on, on the same batch:

- prefill latency: the median over ``--repeats`` of one prefill forward (vision tower + reduction
  + decoder, KV cache built).  All configurations are timed round-robin inside each repeat, so
  the speed-ups are ratios measured side by side (``--clock process --threads 1``: CPU time of this
  process instead of wall time, for a busy shared CPU);
- FLOPs from the formula in ``flops.py`` (decoder prefill; vision tower and projector, identical
  for all; Stage-B anchor selection), and the FLOP-ratio speed-up limit full / reduced;
- peak memory of one prefill above what was allocated before it (CUDA: max_memory_allocated;
  CPU: the allocation peak replayed from the profiler's memory events), and the KV-cache bytes
  (measured on the returned cache, and the formula);
- the reduction's own time (``reduce_visual_tokens`` on precomputed features), the plain
  method's selection alone (its ``select``, without the shared bookkeeping) and, with RESTORE,
  Stage-B anchor selection alone (``anchor_merge`` on the pruned tokens); each method's time over
  the first method's, paired;
- in-LLM methods (``fastv``, ``pdrop``; without RESTORE only): their ranking runs inside the
  timed prefill; FLOPs and KV bytes are summed per layer at each layer's own length (the layers
  before a drop at full length) plus the ranking's cost, and the report gives ``n_vis`` as the
  layer average with the visual tokens per layer (``flops.llm_prefill_flops_layers``).

Writes efficiency.json and efficiency.md under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from omegaconf.errors import OmegaConfBaseException

from llava_restore.constants import IMAGE_TOKEN_INDEX
from llava_restore.eval.generate import cli_entry
from llava_restore.model.llama import KVCache
from llava_restore.reduction import anchor_merge, get_reducer, reduce_visual_tokens
from llava_restore.reduction.base import Reducer, ReductionInputs
from llava_restore.reduction.common import floor_fraction, gather_rows
from llava_restore.reduction.config import ReductionConfig, make_reduction_config
from llava_restore.reduction.inllm import is_in_llm

from .flops import (LlamaDims, anchor_flops, inllm_score_flops, kv_cache_bytes, kv_cache_bytes_layers,
                    llm_prefill_flops, llm_prefill_flops_layers, vision_flops)


@dataclass
class Variant:
    name: str
    cfg: Optional[ReductionConfig]  # None = full tokens

    @property
    def method(self) -> str:
        return "full" if self.cfg is None else self.cfg.method


def make_variants(methods: list[str], n_vis: list[int], restore: list[bool], opts: list[str]) -> list[Variant]:
    """In-LLM methods (fastv, pdrop) are comparison rows without RESTORE: only their plain variant."""
    out = [Variant("full", None)]
    for m in methods:
        get_reducer(m)  # unknown names fail listing the known ones
        for n in n_vis:
            for r in ([False] if is_in_llm(m) else restore):
                cfg = make_reduction_config(list(opts), method=m, n_vis=n, restore=r).resolve()
                out.append(Variant(f"{m}-n{n}" + ("-restore" if r else ""), cfg))
    return out


def variants_from_cli(methods: str, n_vis: str, restore: list[bool], opts: list[str]) -> list[Variant]:
    """``make_variants`` from the CLI's comma-separated --methods and --n-vis; an unknown method,
    option or value stops with one ``error:`` line (SystemExit), no traceback."""
    counts = [n for n in n_vis.split(",") if n]
    if not counts or not all(n.isdigit() for n in counts):
        raise SystemExit(f"error: --n-vis {n_vis!r}: expected comma-separated token counts, e.g. 64,128")
    try:
        return make_variants([m for m in methods.split(",") if m], [int(n) for n in counts], restore, opts)
    except (ValueError, OmegaConfBaseException) as err:
        raise SystemExit(f"error: {str(err).splitlines()[0]}") from None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def timed(fn: Callable[[], object], device: torch.device, clock: str = "wall") -> float:
    """Milliseconds of ``fn``: wall time, or this process's CPU time (``process``: robust to other
    processes on a shared CPU; it sums the threads, so use it with --threads 1)."""
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; known: {sorted(CLOCKS)}")
    if clock == "process" and device.type == "cuda":
        raise ValueError("--clock process measures CPU time; on CUDA use --clock wall")
    now = CLOCKS[clock]
    _sync(device)
    t0 = now()
    fn()
    _sync(device)
    return 1000.0 * (now() - t0)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Allocation peak of ``fn`` above its start, replayed from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    for ev in sorted(prof.events(), key=lambda e: (e.time_range.start, -e.time_range.end)):
        cur += ev.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def peak_bytes(fn: Callable[[], object], device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base, "cuda_max_allocated_above_start"
    return cpu_peak_bytes(fn), "cpu_profiler_allocation_peak"


def cache_bytes(cache: KVCache) -> int:
    return sum(t.numel() * t.element_size() for t in list(cache.keys) + list(cache.values))


# ------------------------------------------------------------------------------ inputs
def synthetic_batch(model, batch_size: int, prefix_len: int, suffix_len: int, device, seed: int = 0):
    """BOS + prefix ids, the image placeholder, suffix ids (random ids), and random pixels."""
    t = model.config.text
    gen = torch.Generator().manual_seed(seed)
    lo = 3  # after <unk>, <s>, </s>
    prefix = torch.randint(lo, t.vocab_size, (batch_size, prefix_len - 1), generator=gen)
    suffix = torch.randint(lo, t.vocab_size, (batch_size, suffix_len), generator=gen)
    bos = torch.full((batch_size, 1), t.bos_token_id if t.bos_token_id is not None else 1)
    img = torch.full((batch_size, 1), IMAGE_TOKEN_INDEX)
    ids = torch.cat([bos, prefix, img, suffix], 1)
    size = model.get_vision_tower().config.image_size
    pixels = torch.randn(batch_size, 3, size, size, generator=gen)
    return ids.to(device), torch.ones_like(ids, dtype=torch.bool).to(device), pixels.to(device)


def prompt_batch(tok, proc, model, question_file: Optional[str], image_folder: Optional[str], batch_size: int,
                 conv_mode: str, device):
    """Real prompts and images: the first questions of a LLaVA question file."""
    from .attention import load_batches  # noqa: PLC0415

    if question_file is None:
        raise ValueError("--model-path needs --question-file and --image-folder (or use --synthetic-prompt)")
    return next(iter(load_batches(question_file, image_folder, tok, proc, model.config.image_aspect_ratio,
                                  conv_mode, batch_size, batch_size, device)))


# ------------------------------------------------------------------------------ measurement
def measure(model, ids, mask, pixels, variants: list[Variant], repeats: int, warmup: int,
            clock: str = "wall") -> list[dict]:
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pixels = pixels.to(dtype)
    t = model.config.text
    dims = LlamaDims.of(t)
    tower = model.get_vision_tower()
    vc = tower.config
    vis_fl = vision_flops(vc.hidden_size, vc.intermediate_size, tower.last_layer + 1, tower.num_patches,
                          vc.patch_size, t.hidden_size)
    elem = torch.empty((), dtype=dtype).element_size()

    with torch.inference_mode():  # as the eval runs it (eval/generate.py): no autograd bookkeeping per op
        vis, proj, cls = model.encode_images(pixels, want_cls_attn=True)
        N = proj.shape[1]

        def prefill(v: Variant):
            return model(ids, mask, pixels, reduction=v.cfg, use_cache=True, padding_side="left")

        # each reduction's own inputs (plain VisionZip also needs the CLS feature and the tower's keys)
        red_inputs = {v.name: model.encode_for_reduction(pixels, v.cfg) for v in variants
                      if v.cfg is not None and not is_in_llm(v.cfg.method)}  # in-LLM: ranked inside the prefill

        def reduce(v: Variant):
            proj_v, inputs = red_inputs[v.name]
            return reduce_visual_tokens(proj_v, v.cfg, **inputs)

        anchor_jobs = {}
        for v in variants:
            reducer = None if v.cfg is None else get_reducer(v.cfg.method)
            if v.cfg is not None and v.cfg.merge and type(reducer).select is not Reducer.select:
                n_keep = floor_fraction(v.cfg.n_vis, v.cfg.split_ratio)
                inp = ReductionInputs(feats=proj, cfg=v.cfg, seed=v.cfg.seed, vis_feats=vis, cls_attn=cls,
                                      grid_hw=tower.grid_hw)
                sel = reducer.select(inp, n_keep)
                y = gather_rows(proj, sel.dropped)  # (B, M, D)
                anchor_jobs[v.name] = (y, v.cfg.n_vis - n_keep, v.cfg.anchor_rule, sel.dropped)

        sel_jobs = {}  # plain methods with a Stage-A selection of their own, on these inputs: the selection alone
        for v in variants:
            reducer = None if v.cfg is None or is_in_llm(v.cfg.method) else get_reducer(v.cfg.method)
            if (reducer is not None and not v.cfg.merge and type(reducer).select is not Reducer.select
                    and set(reducer.needs(v.cfg)) <= {"cls_attn", "vis_feats"}):
                inp = ReductionInputs(feats=proj, cfg=v.cfg, seed=v.cfg.seed, vis_feats=vis, cls_attn=cls,
                                      grid_hw=tower.grid_hw)
                sel_jobs[v.name] = (reducer, inp, v.cfg.n_vis)

        times = {v.name: [] for v in variants}
        red_times = {v.name: [] for v in variants if v.name in red_inputs}
        sel_times = {k: [] for k in sel_jobs}
        anc_times = {k: [] for k in anchor_jobs}
        for r in range(warmup + repeats):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:  # rotate the order: no configuration always goes first
                dt = timed(lambda: prefill(v), device, clock)
                if v.name in red_times:
                    rt = timed(lambda: reduce(v), device, clock)
                if v.name in anchor_jobs:
                    y, n_m, rule, idx = anchor_jobs[v.name]
                    at = timed(lambda: anchor_merge(y, n_m, rule, seed=v.cfg.seed, token_index=idx), device, clock)
                if v.name in sel_jobs:
                    reducer, inp, n_sel = sel_jobs[v.name]
                    st = timed(lambda: reducer.select(inp, n_sel), device, clock)
                if r >= warmup:
                    times[v.name].append(dt)
                    if v.name in red_times:
                        red_times[v.name].append(rt)
                    if v.name in sel_times:
                        sel_times[v.name].append(st)
                    if v.name in anchor_jobs:
                        anc_times[v.name].append(at)

        rows = []
        for v in variants:
            out = prefill(v)
            L = out.prepared.valid.sum(1).tolist()  # per-sample prefill lengths
            peak, peak_kind = peak_bytes(lambda: prefill(v), device)
            inllm = out.prepared.inllm
            if inllm is None:
                llm = sum(llm_prefill_flops(dims, int(n)) for n in L) / len(L)
                kv_formula = sum(kv_cache_bytes(dims, int(n), elem) for n in L) / len(L)
                seq, per_layer, n_avg = sum(L) / len(L), None, (N if v.cfg is None else v.cfg.n_vis)
            else:  # per-layer lengths: the layers before a drop at full length
                lengths = inllm.tokens_per_layer.tolist()  # (B, layers) real tokens per row
                llm = sum(llm_prefill_flops_layers(dims, row) + inllm_flops(dims, inllm, b)
                          for b, row in enumerate(lengths))
                llm /= len(lengths)
                kv_formula = sum(kv_cache_bytes_layers(dims, row, elem) for row in lengths) / len(lengths)
                seq = sum(sum(row) / len(row) for row in lengths) / len(lengths)
                per_layer, n_avg = inllm.schedule.counts, inllm.schedule.average
            anc = 0
            if v.name in anchor_jobs:
                y = anchor_jobs[v.name][0]
                anc = anchor_flops(y.shape[1], y.shape[2])
            rows.append({
                "name": v.name, "method": v.method, "n_vis": N if v.cfg is None else v.cfg.n_vis,
                "restore": bool(v.cfg is not None and v.cfg.restore),
                "n_vis_layer_average": n_avg, "visual_per_layer": per_layer,
                "seq_len": seq,
                "prefill_ms": statistics.median(times[v.name]), "prefill_ms_all": times[v.name],
                "llm_flops": llm, "vision_flops": vis_fl, "anchor_flops": anc,
                "total_flops": llm + vis_fl + anc,
                "peak_bytes": peak, "peak_kind": peak_kind,
                "kv_bytes_measured": cache_bytes(out.cache) / len(L),
                "kv_bytes_formula": kv_formula,
                "reduce_ms": statistics.median(red_times[v.name]) if v.name in red_times else 0.0,
                "reduce_ms_all": red_times.get(v.name, []),
                "anchor_ms": statistics.median(anc_times[v.name]) if v.name in anc_times else 0.0,
                "select_ms": statistics.median(sel_times[v.name]) if v.name in sel_times else 0.0,
                "select_ms_all": sel_times.get(v.name, []),
            })
    full = rows[0]
    for row in rows:
        row["speedup"] = full["prefill_ms"] / row["prefill_ms"]
        row["llm_flop_ratio"] = row["llm_flops"] / full["llm_flops"]
        row["flop_speedup_limit"] = full["total_flops"] / row["total_flops"]
        row["llm_flop_speedup_limit"] = full["llm_flops"] / row["llm_flops"]
        row["anchor_flops_share"] = row["anchor_flops"] / row["total_flops"]
    return rows


def inllm_flops(dims: LlamaDims, report, row: int) -> int:
    """Row ``row``'s rankings at its drops (``flops.inllm_score_flops``)."""
    return sum(inllm_score_flops(dims, int(L[row]), n_q, own_layer=e.score_layer == e.drop_layer - 1)
               for e, L, n_q in report.scored)


# ------------------------------------------------------------------------------ report
def table(rows: list[dict]) -> str:
    head = ["config", "n_vis (layer avg)", "tokens L", "prefill ms", "speed-up", "FLOP limit", "LLM FLOP limit", "LLM GFLOPs",
            "peak MiB", "KV MiB", "reduce ms", "anchor ms", "anchor FLOPs %"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        out.append("| " + " | ".join([
            r["name"], f"{r['n_vis_layer_average']:.1f}", f"{r['seq_len']:.0f}", f"{r['prefill_ms']:.2f}", f"{r['speedup']:.2f}x",
            f"{r['flop_speedup_limit']:.2f}x", f"{r['llm_flop_speedup_limit']:.2f}x", f"{r['llm_flops'] / 1e9:.3f}",
            f"{r['peak_bytes'] / 2**20:.1f}", f"{r['kv_bytes_measured'] / 2**20:.2f}", f"{r['reduce_ms']:.2f}",
            f"{r['anchor_ms']:.2f}", f"{100 * r['anchor_flops_share']:.3f}"]) + " |")
    return "\n".join(out)


def paired(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of the per-repeat ratios num[r] / den[r]: both were timed in the same
    round-robin repeat, seconds apart, so a slow phase of a shared machine cancels out."""
    q = statistics.quantiles([a / b for a, b in zip(num, den)], n=4) if len(num) > 1 else [num[0] / den[0]] * 3
    return q[1], q[0], q[2]


def restore_vs_plain(rows: list[dict]) -> list[dict]:
    """Per method and n: the prefill time of RESTORE over plain pruning (same run), as the ratio of
    the medians and as the median of the per-repeat ratios (with its quartiles)."""
    by = {(r["method"], r["n_vis"], r["restore"]): r for r in rows}
    out = []
    for (m, n, rs), r in by.items():
        if rs and (m, n, False) in by:
            plain = by[(m, n, False)]
            med, q1, q3 = paired(r["prefill_ms_all"], plain["prefill_ms_all"])
            out.append({"method": m, "n_vis": n, "plain_speedup": plain["speedup"], "restore_speedup": r["speedup"],
                        "restore_over_plain_time": r["prefill_ms"] / plain["prefill_ms"],
                        "restore_over_plain_paired": med, "restore_over_plain_q1": q1, "restore_over_plain_q3": q3})
    return out


def reduction_vs_first(rows: list[dict], key: str = "reduce") -> list[dict]:
    """Per n: each plain pre-LLM method's time over the first method's (default DivPrune), the median
    of the per-repeat ratios.  key 'reduce': ``reduce_visual_tokens`` (the selection and the shared
    bookkeeping); 'select': the method's selection alone."""
    plain = [r for r in rows if r["method"] != "full" and not r["restore"] and r.get(f"{key}_ms_all")]
    out = []
    for r in plain:
        ref = next(p for p in plain if p["n_vis"] == r["n_vis"])
        if ref is not r:
            med, q1, q3 = paired(r[f"{key}_ms_all"], ref[f"{key}_ms_all"])
            out.append({"method": r["method"], "reference": ref["method"], "n_vis": r["n_vis"],
                        "ratio_of_medians": r[f"{key}_ms"] / ref[f"{key}_ms"], "paired": med, "q1": q1, "q3": q3})
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m llava_restore.analysis.efficiency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-path", help="a checkpoint folder (e.g. playground/cache/llava-playground)")
    src.add_argument("--shape", help="random weights of a real shape, no download: llava-7b or llava-13b")
    ap.add_argument("--layers", type=int, default=None, help="--shape: decoder layers (default: the real count)")
    ap.add_argument("--vision-layers", type=int, default=None, help="--shape: vision layers (default: the real count)")
    ap.add_argument("--question-file", default=None, help="--model-path: take the prompts and images from here")
    ap.add_argument("--image-folder", default=None)
    ap.add_argument("--synthetic-prompt", action="store_true", help="random ids and pixels even with --model-path")
    ap.add_argument("--prefix-len", type=int, default=35, help="synthetic: tokens before the image (vicuna_v1: 35)")
    ap.add_argument("--suffix-len", type=int, default=30, help="synthetic: tokens after the image")
    ap.add_argument("--conv-mode", default="vicuna_v1")
    ap.add_argument("--methods", default="divprune,vispruner,holov",
                    help="comma-separated; in-LLM methods (fastv, pdrop) run without RESTORE only")
    ap.add_argument("--n-vis", default="64,128,192")
    ap.add_argument("--restore", choices=["both", "on", "off"], default="both")
    ap.add_argument("--reduction-opts", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="default: float16 on GPU, float32 on CPU")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time, or (CPU, shared machine) this process's CPU time: use with --threads 1")
    ap.add_argument("--out", default="runs/analysis/efficiency")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    restore = {"both": [False, True], "on": [True], "off": [False]}[args.restore]
    variants = variants_from_cli(args.methods, args.n_vis, restore, args.reduction_opts)
    if args.shape:
        from .random_model import build_random_llava  # noqa: PLC0415

        try:
            model = build_random_llava(args.shape, device=device, dtype=dtype, layers=args.layers,
                                       vision_layers=args.vision_layers)
        except ValueError as err:  # an unknown shape or a layer count it cannot have: one line, no traceback
            raise SystemExit(f"error: --shape {args.shape}: {err}") from None
        batch = synthetic_batch(model, args.batch_size, args.prefix_len, args.suffix_len, device)
        source = f"random weights, shape {args.shape}" + (f", {args.layers} layers" if args.layers else "")
    else:
        from llava_restore.model.builder import load_pretrained_model  # noqa: PLC0415

        tok, model, proc, _ = load_pretrained_model(args.model_path, device=str(device), torch_dtype=dtype)
        model.eval()
        if args.synthetic_prompt:
            batch = synthetic_batch(model, args.batch_size, args.prefix_len, args.suffix_len, device)
        else:
            batch = prompt_batch(tok, proc, model, args.question_file, args.image_folder, args.batch_size,
                                 args.conv_mode, device)
        source = args.model_path
    rows = measure(model, *batch, variants, args.repeats, args.warmup, args.clock)
    meta = {"model": source, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "batch_size": args.batch_size, "repeats": args.repeats,
            "warmup": args.warmup, "clock": args.clock, "formula": "llava_restore/analysis/flops.py (docs/ablations.md)"}
    result = {"meta": meta, "rows": rows, "restore_vs_plain": restore_vs_plain(rows),
              "reduction_vs_first": reduction_vs_first(rows),
              "selection_vs_first": reduction_vs_first(rows, "select")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "efficiency.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    md = [f"# Prefill efficiency: {source}", "",
          f"device {meta['device_name']} ({meta['dtype']}, {meta['threads']} threads, {args.clock} clock), "
          f"batch {args.batch_size}, "
          f"median of {args.repeats} repeats after {args.warmup} warm-up, all configurations round-robin.", "",
          table(rows), "", "| method | n | speed-up plain | speed-up RESTORE | RESTORE / plain time "
          "(ratio of medians) | RESTORE / plain time (paired median [quartiles]) |", "|---|---|---|---|---|---|"]
    for r in result["restore_vs_plain"]:
        md.append(f"| {r['method']} | {r['n_vis']} | {r['plain_speedup']:.2f}x | {r['restore_speedup']:.2f}x | "
                  f"{r['restore_over_plain_time']:.3f} | {r['restore_over_plain_paired']:.3f} "
                  f"[{r['restore_over_plain_q1']:.3f}, {r['restore_over_plain_q3']:.3f}] |")
    for key, what in (("reduction_vs_first", "reduction time"), ("selection_vs_first", "selection time")):
        if result[key]:
            md += ["", f"| method | n | {what} / the first method's (ratio of medians) | paired median [quartiles] |",
                   "|---|---|---|---|"]
            md += [f"| {r['method']} / {r['reference']} | {r['n_vis']} | {r['ratio_of_medians']:.2f} | {r['paired']:.2f} "
                   f"[{r['q1']:.2f}, {r['q3']:.2f}] |" for r in result[key]]
    staged = [r for r in rows if r["visual_per_layer"] is not None]
    if staged:  # in-LLM methods: n_vis is the layer average of these counts (per image)
        md += ["", "| config | n_vis (layer average) | visual tokens per layer |", "|---|---|---|"]
        md += [f"| {r['name']} | {r['n_vis_layer_average']:.2f} | {' '.join(map(str, r['visual_per_layer']))} |"
               for r in staged]
    (out / "efficiency.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    print(f"wrote {out / 'efficiency.json'} and {out / 'efficiency.md'}")
    return result


if __name__ == "__main__":
    cli_entry(main)  # a missing file or image, or an n_vis above N: one "error: ..." line
