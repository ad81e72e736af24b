"""One benchmark run end to end: generate (possibly sharded), merge, score, write ``result.json``.

    python -m llava_restore.eval.run --benchmark pope --model-path M [--reduction divprune --n-vis 64 --restore]

The run folder is ``<output-root>/<benchmark>/<ckpt>/<slug>-<hash>``: ``slug`` reads the reduction
(``full``, ``divprune-n64-restore``...), ``hash`` is 8 hex digits of the resolved identity (model,
question file and image folder, the resolved ReductionConfig, the decoding settings), so ablations
never share a folder. Batch size, device, dtype and --attn-impl do not enter it (they must not
change the answers). Inside:

- ``run.json``: the identity; ``shards/<N>_<i>.jsonl``: the answers of chunk i of N (resumable),
  with ``.errors.jsonl`` (skipped questions) and ``.jsonl.stats.json`` (timings) beside them;
- ``answers.jsonl``: the merged answers (every question exactly once, else the merge fails
  naming the missing ids); ``errors.jsonl``: the skipped questions of all shards;
- ``result.json``: metrics, resolved config, git commit, counts and timings.

Stages: ``all`` (default: every chunk in this process, then finalize), ``generate`` (one chunk with
``--chunk-idx``, e.g. one GPU or one Slurm array task; all chunks without it), ``finalize`` (merge,
score, result.json).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from llava_restore.eval.answers import merge_shards, read_skipped
from llava_restore.eval.benchmarks import get_adapter, get_benchmark, known_benchmarks, resolve_files
from llava_restore.eval.generate import (BundleCache, LazyBundle, add_decoding_args, add_model_args, aggregate_stats,
                                         assign_keys, cli_entry, generate_chunk, get_chunk, model_name_from_path,
                                         settings_from_args, stats_path)

DEFAULT_DATA_ROOT = "./playground/data/eval"
DEFAULT_OUTPUT_ROOT = "./runs/eval"
HASH_LEN = 8
STAGES = ("all", "generate", "finalize")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("run")
    g.add_argument("--benchmark", required=True, help=f"one of: {', '.join(known_benchmarks())}")
    g.add_argument("--stage", choices=STAGES, default="all")
    g.add_argument("--num-chunks", type=int, default=1, help="shards of the question file (LLaVA's split)")
    g.add_argument("--chunk-idx", type=int, default=None, help="with --stage generate: the one shard to answer")
    g.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="LLaVA's eval data layout")
    g.add_argument("--output-root", default=DEFAULT_OUTPUT_ROOT)
    g.add_argument("--ckpt", default=None, help="model name in the run folder (default: LLaVA's name of --model-path)")
    g.add_argument("--run-dir", default=None, help="use this folder instead of the derived one")
    g.add_argument("--question-file", default=None, help="default: the benchmark's file under --data-root")
    g.add_argument("--image-folder", default=None, help="default: the benchmark's folder under --data-root")
    g.add_argument("--data", nargs="*", default=[], metavar="KEY=PATH", help="override a scorer input file")
    g.add_argument("--print-run-dir", action="store_true", help="print the run folder and exit")
    add_model_args(ap)
    add_decoding_args(ap)
    return ap


def reduction_slug(cfg) -> str:
    if cfg is None or cfg.method == "none":
        return "full" if cfg is None or not cfg.restore else "full-restore"
    parts = [cfg.method] + ([f"n{cfg.n_vis}"] if cfg.n_vis is not None else [])
    parts += [f"r{cfg.keep_ratio:g}"] if getattr(cfg, "keep_ratio", None) is not None else []  # older run.json: none
    parts += ["restore"] if cfg.restore else []
    return "-".join(parts)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model")
_EDGE = 1 << 16  # bytes read from each end of a weight file


def checkpoint_fingerprint(path: Optional[str]) -> Optional[str]:
    """A cheap content fingerprint of a local checkpoint folder (None for a hub id or None): every
    weight/config file below it (two levels, e.g. ``vision_tower/``), by relative name, size and its
    first and last 64 KiB. Retraining a checkpoint in place therefore gives a new run folder instead
    of resuming the old weights' answers, while copying or re-cloning it keeps the same one."""
    if path is None or not os.path.isdir(os.path.expanduser(path)):
        return None
    root = Path(os.path.expanduser(path))
    h = hashlib.sha256()
    files = sorted(p for p in list(root.glob("*")) + list(root.glob("*/*"))
                   if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not p.name.endswith("train_summary.json"))
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(_EDGE))
            if size > 2 * _EDGE:
                fh.seek(size - _EDGE)
                h.update(fh.read(_EDGE))
    return h.hexdigest()[:16]


def run_identity(bench, args, settings, question_file, image_folder) -> dict:
    norm = (lambda p: os.path.normpath(os.path.expanduser(str(p))) if p is not None else None)
    return {"benchmark": bench.name, "model_path": norm(args.model_path), "model_base": norm(args.model_base),
            "model_fingerprint": checkpoint_fingerprint(args.model_path),
            "base_fingerprint": checkpoint_fingerprint(args.model_base),
            "vision_tower": norm(args.vision_tower), "question_file": norm(question_file),
            "image_folder": norm(image_folder),
            "reduction": dataclasses.asdict(settings.reduction) if settings.reduction is not None else None,
            "decoding": settings.decoding()}


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:HASH_LEN]


def derive_run_dir(output_root, bench_name: str, ckpt: str, identity: dict) -> Path:
    return Path(output_root) / bench_name / ckpt / f"{reduction_slug_of(identity)}-{identity_hash(identity)}"


def reduction_slug_of(identity: dict) -> str:
    red = identity["reduction"]
    return reduction_slug(None if red is None else argparse.Namespace(**red))


def shard_paths(run_dir: Path, num_chunks: int, idx: int) -> tuple:
    """(answers, errors) files of shard ``idx`` of ``num_chunks``."""
    base = run_dir / "shards" / f"{num_chunks}_{idx}"
    return Path(f"{base}.jsonl"), Path(f"{base}.errors.jsonl")


def git_info() -> dict:
    root = Path(__file__).resolve().parents[2]
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return {"commit": None, "dirty": None}
    head = subprocess.run([git, "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    status = subprocess.run([git, "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True)
    return {"commit": head.stdout.strip() or None if head.returncode == 0 else None,
            "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def parse_overrides(items: List[str], parser: argparse.ArgumentParser) -> Dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            parser.error(f"--data item {item!r} is not of the form KEY=PATH")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def resolve_run(args: argparse.Namespace, bench, settings) -> tuple:
    """(run folder, identity, question file, image folder, ckpt name) of parsed eval.run args."""
    data_dir = Path(os.path.expanduser(args.data_root)) / bench.folder
    question_file = Path(args.question_file or data_dir / bench.question_file)
    image_folder = Path(args.image_folder or data_dir / bench.image_folder)
    identity = run_identity(bench, args, settings, question_file, image_folder)
    ckpt = args.ckpt or model_name_from_path(args.model_path)
    run_dir = Path(args.run_dir) if args.run_dir else derive_run_dir(args.output_root, bench.name, ckpt, identity)
    return run_dir, identity, question_file, image_folder, ckpt


def finalize(bench, samples, key_fn, run_dir: Path, num_chunks: int, files, question_file: Path,
             context: dict) -> dict:
    """Merge the shards (every question exactly once, skipped ones excepted), score, write result.json."""
    shards = [shard_paths(run_dir, num_chunks, i) for i in range(num_chunks)]
    skipped = [r for _, err in shards for r in read_skipped(err)]
    errors_file = run_dir / "errors.jsonl"
    if skipped:
        errors_file.write_text("".join(json.dumps(r) + "\n" for r in skipped))
    elif errors_file.exists():
        errors_file.unlink()
    skipped_keys = {key_fn(r) for r in skipped}
    expected = [s.key for s in samples if s.key not in skipped_keys]
    answers = run_dir / "answers.jsonl"
    n_answered = merge_shards([a for a, _ in shards], answers, expected, key_fn)
    metrics = bench.score(answers, files, question_file, run_dir, n_skipped=len(skipped))
    stats = [rec for a, _ in shards if stats_path(a).is_file() for rec in json.loads(stats_path(a).read_text())]
    result = {
        "benchmark": bench.name,
        "main_metric": {"name": bench.main_metric, "value": metrics.get(bench.main_metric)},
        "metrics": metrics,
        "n_questions": len(samples), "n_answered": n_answered, "n_skipped": len(skipped),
        "skipped_question_ids": [r["question_id"] for r in skipped],
        "timings": aggregate_stats(stats),
        "git": git_info(),
        "run_dir": str(run_dir), "answers_file": str(answers), "num_chunks": num_chunks,
        "data": {"question_file": str(question_file), **{k: None if v is None else str(v) for k, v in files.items()}},
        **context,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(run_dir / "result.json", result)
    return result


def main(argv=None, bundles: Optional[BundleCache] = None) -> Optional[dict]:
    """``bundles``: reuse models loaded by earlier runs of this process (the ablation worker)."""
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        bench = get_benchmark(args.benchmark)
    except ValueError as err:
        ap.error(str(err))
    adapter = get_adapter(bench.adapter)
    settings = settings_from_args(args, adapter, ap)
    if args.num_chunks < 1:
        ap.error(f"--num-chunks must be >= 1, got {args.num_chunks}")
    if args.chunk_idx is not None:
        if args.stage != "generate":
            ap.error("--chunk-idx needs --stage generate (finalize merges all chunks)")
        if not 0 <= args.chunk_idx < args.num_chunks:
            ap.error(f"--chunk-idx {args.chunk_idx} must be in [0, --num-chunks {args.num_chunks})")
    try:
        files = resolve_files(bench, Path(os.path.expanduser(args.data_root)), parse_overrides(args.data, ap))
    except ValueError as err:
        ap.error(str(err))
    run_dir, identity, question_file, image_folder, ckpt = resolve_run(args, bench, settings)
    if args.print_run_dir:
        print(run_dir)
        return None
    samples = adapter.load(str(question_file), str(image_folder), **bench.adapter_options)
    key_fn = assign_keys(samples, question_file)
    if args.stage in ("all", "generate"):
        write_json(run_dir / "run.json", {**identity, "ckpt": ckpt, "slug": run_dir.name})
        get_bundle = bundles.lazy(args) if bundles is not None else LazyBundle(args)
        chunks = [args.chunk_idx] if args.chunk_idx is not None else range(args.num_chunks)
        for i in chunks:
            answers, errors = shard_paths(run_dir, args.num_chunks, i)
            st = generate_chunk(get_bundle, get_chunk(samples, args.num_chunks, i), key_fn, answers, errors, settings)
            print(f"[{bench.name}] shard {i}/{args.num_chunks}: {st['n_generated']} answered now, "
                  f"{st['n_already']} before, {st['n_skipped']} skipped -> {answers}", file=sys.stderr)
    if args.stage == "generate":
        return None
    context = {"model": {"path": args.model_path, "base": args.model_base, "ckpt": ckpt,
                         "model_id": model_name_from_path(args.model_path)},
               "reduction": identity["reduction"], "reduction_slug": reduction_slug(settings.reduction),
               "generation": {**settings.decoding(), "batch_size": settings.batch_size, "attn_impl": args.attn_impl,
                              "sdpa_kernel": args.sdpa_kernel, "dtype": args.dtype, "device": args.device,
                              "vision_cache": settings.vision_cache},
               "identity_hash": identity_hash(identity), "argv": sys.argv if argv is None else list(argv)}
    result = finalize(bench, samples, key_fn, run_dir, args.num_chunks, files, question_file, context)
    m = result["main_metric"]
    print(f"[{bench.name}] {m['name']} = {m['value']}  ({result['n_answered']} answered, {result['n_skipped']} "
          f"skipped) -> {run_dir / 'result.json'}")
    return result


if __name__ == "__main__":
    cli_entry(main)
