"""Eval throughput at several batch sizes, through the real generation core (answers written to a
temporary folder, exactly as the CLIs do), and the ratio to batch size 1.

    python scripts/bench/eval_throughput.py                      # playground model + GQA-style set
    python scripts/bench/eval_throughput.py --model-path M --question-file Q --image-folder I \
        --n 64 --batch-sizes 1 8 --reduction divprune --n-vis 64 --restore

Each batch size first answers one warm-up batch (not timed), then the first ``--n`` questions.
Prints samples/s, prefill and generate ms/sample, and whether the answers equal batch size 1's.
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
from llava_restore.eval.generate import (add_decoding_args, add_model_args, assign_keys, generate_chunk,  # noqa: E402
                                         load_bundle, settings_from_args)

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
    add_model_args(ap, default_model_path=str(REPO / PLAYGROUND_MODEL))
    add_decoding_args(ap)
    args = ap.parse_args(argv)
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
    rows, texts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for bs in args.batch_sizes:
            settings.batch_size = bs
            generate_chunk(lambda: bundle, samples[:warm_n], key_fn, Path(tmp) / f"warm{bs}.jsonl",
                           Path(tmp) / "errors.jsonl", settings)
            out = Path(tmp) / f"bs{bs}.jsonl"
            st = generate_chunk(lambda: bundle, timed, key_fn, out, Path(tmp) / "errors.jsonl", settings)
            texts[bs] = out.read_text()
            rows.append((bs, st["n_generated"] / st["wall_s"], 1000 * st["prefill_s"] / st["n_generated"],
                         1000 * st["generate_s"] / st["n_generated"]))
    base = rows[0][1]
    print(f"{'batch':>5} {'samples/s':>10} {'prefill ms/s':>13} {'generate ms/s':>14} {'vs bs=' + str(rows[0][0]):>8} "
          f"{'same answers':>13}")
    ref = [json.loads(line)["text"] for line in texts[rows[0][0]].splitlines()]
    for bs, sps, pre, gen in rows:
        got = [json.loads(line)["text"] for line in texts[bs].splitlines()]
        n_diff = sum(a != b for a, b in zip(got, ref)) + abs(len(got) - len(ref))
        same = "yes" if n_diff == 0 else f"NO ({n_diff}/{len(ref)} differ)"
        print(f"{bs:>5} {sps:>10.2f} {pre:>13.1f} {gen:>14.1f} {sps / base:>7.2f}x {same:>13}")
    return {"rows": rows, "ratio": rows[-1][1] / base}


if __name__ == "__main__":
    main()
