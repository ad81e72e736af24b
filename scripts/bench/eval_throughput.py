"""Eval throughput at several batch sizes, through the real generation core (answers written to a
temporary folder, exactly as the CLIs do), and the ratio to batch size 1.

    python scripts/bench/eval_throughput.py                      # playground model + GQA-style set
    python scripts/bench/eval_throughput.py --model-path M --question-file Q --image-folder I \
        --n 64 --batch-sizes 1 8 --reduction divprune --n-vis 64 --restore

Each batch size first answers one warm-up batch (not timed), then the ``--n`` questions after it,
``--passes`` times over (each pass into a fresh answers file; the ratio uses the last pass).
Prints samples/s, prefill and generate ms/sample, and whether the answers equal batch size 1's;
``--slowest K`` also lists each pass's K slowest prefill calls with their (B, L) shapes, which tells
a one-off cost (first pass only) from a steady one. ``--sdpa-kernel`` restricts PyTorch's SDPA back-ends, as in the eval CLIs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llava_restore.eval.benchmarks import get_adapter, get_benchmark, known_benchmarks  # noqa: E402
from llava_restore.eval.generate import (PrefillTimer, add_decoding_args, add_model_args,  # noqa: E402
                                         assign_keys, generate_chunk, load_bundle, settings_from_args)

PLAYGROUND_MODEL = "playground/cache/llava-playground"
PLAYGROUND_DATA = "playground/data/eval"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", default="gqa", help=f"question/image defaults from: {', '.join(known_benchmarks())}")
    ap.add_argument("--data-root", default=str(REPO / PLAYGROUND_DATA))
    ap.add_argument("--question-file", default=None)
    ap.add_argument("--image-folder", default=None)
    ap.add_argument("--n", type=int, default=64, help="questions timed per batch size")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--passes", type=int, default=1, help="timed passes over the questions per batch size")
    ap.add_argument("--slowest", type=int, default=0, help="print the K slowest prefill calls of each pass")
    ap.add_argument("--json", default=None, help="also write the rows (batch, samples/s, prefill and generate ms/sample) here")
    add_model_args(ap, default_model_path=str(REPO / PLAYGROUND_MODEL))
    add_decoding_args(ap)
    args = ap.parse_args(argv)
    if args.passes < 1 or args.slowest < 0:
        ap.error(f"--passes must be >= 1 and --slowest >= 0 (got {args.passes}, {args.slowest})")
    bench = get_benchmark(args.benchmark)
    adapter = get_adapter(bench.adapter)
    args.no_progress = True
    settings = settings_from_args(args, adapter, ap)
    root = Path(args.data_root) / bench.folder
    qf = args.question_file or str(root / bench.question_file)
    imgs = args.image_folder or str(root / bench.image_folder)
    if not Path(args.model_path).is_dir() or not Path(qf).is_file():
        ap.error(f"need a model folder and a question file (got {args.model_path}, {qf}); build the playground "
                 "(python -m llava_restore.playground build / train) or pass --model-path/--question-file")
    samples = adapter.load(qf, imgs, **bench.adapter_options)
    key_fn = assign_keys(samples, qf)
    bundle = load_bundle(args)
    warm_n = max(args.batch_sizes)
    timed = samples[warm_n:warm_n + args.n] if len(samples) >= warm_n + args.n else samples[:args.n]
    print(f"model {args.model_path} on {bundle.device}; {len(timed)} questions of {qf}; "
          f"max_new_tokens {settings.max_new_tokens}; reduction {settings.reduction.method if settings.reduction else 'none'}")
    print(f"sdpa kernel: {settings.sdpa_kernel}; dtype {bundle.dtype}; {args.passes} pass(es) per batch size")
    rows, texts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for bs in args.batch_sizes:
            settings.batch_size = bs
            generate_chunk(lambda: bundle, samples[:warm_n], key_fn, Path(tmp) / f"warm{bs}.jsonl",
                           Path(tmp) / "errors.jsonl", settings)
            for p in range(args.passes):
                out = Path(tmp) / f"bs{bs}_pass{p}.jsonl"
                with PrefillTimer(bundle.model, bundle.device) as timer:
                    st = generate_chunk(lambda: bundle, timed, key_fn, out, Path(tmp) / "errors.jsonl", settings)
                row = (bs, st["n_generated"] / st["wall_s"], 1000 * st["prefill_s"] / st["n_generated"],
                       1000 * st["generate_s"] / st["n_generated"])
                if args.passes > 1:
                    print(f"  bs={bs} pass {p + 1}: {row[1]:.2f} samples/s, prefill {row[2]:.1f} ms/sample, "
                          f"generate {row[3]:.1f} ms/sample")
                if args.slowest:
                    worst = sorted(timer.calls, key=lambda c: -c[0])[:args.slowest]
                    med = sorted(c[0] for c in timer.calls)[len(timer.calls) // 2]
                    print(f"  bs={bs} pass {p + 1}: {len(timer.calls)} prefills, median {1000 * med:.1f} ms; slowest: "
                          + ", ".join(f"{1000 * t:.1f} ms {list(shape)}" for t, shape in worst))
            texts[bs] = out.read_text()
            rows.append(row)
    base = rows[0][1]
    print(f"{'batch':>5} {'samples/s':>10} {'prefill ms/s':>13} {'generate ms/s':>14} {'vs bs=' + str(rows[0][0]):>8} "
          f"{'same answers':>13}")
    ref = [json.loads(line)["text"] for line in texts[rows[0][0]].splitlines()]
    for bs, sps, pre, gen in rows:
        got = [json.loads(line)["text"] for line in texts[bs].splitlines()]
        n_diff = sum(a != b for a, b in zip(got, ref)) + abs(len(got) - len(ref))
        same = "yes" if n_diff == 0 else f"NO ({n_diff}/{len(ref)} differ)"
        print(f"{bs:>5} {sps:>10.2f} {pre:>13.1f} {gen:>14.1f} {sps / base:>7.2f}x {same:>13}")
    result = {"device": str(bundle.device), "dtype": str(bundle.dtype), "model": args.model_path, "rows": rows,
              "ratio": rows[-1][1] / base}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
