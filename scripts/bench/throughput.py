"""Generation throughput at several batch sizes: LLaVA-1.5-7B shape with random weights (no download),
or any checkpoint folder (e.g. the playground model on a CPU).

    python scripts/bench/throughput.py --device cuda --dtype bfloat16 --batch-sizes 1 8 16
    python scripts/bench/throughput.py --model-path playground/cache/llava-playground --threads 1   # CPU
    python scripts/bench/throughput.py --layers 1 --vision-layers 2 --n 4 --batch-sizes 1 2 --new-tokens 2  # CPU smoke

``--n`` prompts (BOS + 35 prefix tokens, the image, 20-40 suffix tokens: eval-like, so batches are
left-padded) are answered with greedy decoding of exactly ``--new-tokens`` tokens each (no EOS: random
weights would stop at random places), in batches of each size after one untimed warm-up batch.
Prints samples/s per batch size and the ratio to the first batch size; ``--json`` writes the rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the checkout, installed or not

from llava_restore.analysis.random_model import build_random_llava  # noqa: E402
from llava_restore.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from llava_restore.model.attention import sdpa_kernels  # noqa: E402
from llava_restore.model.mm_utils import pad_sequences  # noqa: E402
from llava_restore.reduction.cli import add_reduction_args, reduction_config_from_args  # noqa: E402

PREFIX = 35  # tokens before the image in LLaVA-1.5's vicuna_v1 prompt
SUFFIX = (20, 40)  # question lengths, tokens after the image


def prompts(n: int, vocab: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        s = int(torch.randint(SUFFIX[0], SUFFIX[1] + 1, (1,), generator=g))
        body = torch.randint(3, vocab, (PREFIX - 1 + s,), generator=g)
        out.append(torch.cat([torch.tensor([1]), body[:PREFIX - 1], torch.tensor([IMAGE_TOKEN_INDEX]), body[PREFIX - 1:]]))
    return out


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--shape", default="llava-7b", help="random weights of this shape (llava-7b, llava-13b)")
    src.add_argument("--model-path", default=None, help="a checkpoint folder instead of random weights")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--vision-layers", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                    help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--n", type=int, default=32, help="prompts timed per batch size")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--sdpa-kernel", default="no-cudnn", help="as the eval CLIs (auto, no-cudnn, efficient, ...)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    add_reduction_args(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float32" if dev.type == "cpu" else "bfloat16"))
    red = reduction_config_from_args(args)
    if args.model_path:
        from llava_restore.model.builder import load_pretrained_model  # noqa: PLC0415

        model = load_pretrained_model(args.model_path, device=str(dev), torch_dtype=dtype)[1].eval()
        source = args.model_path
    else:
        try:
            model = build_random_llava(args.shape, device=dev, dtype=dtype, layers=args.layers,
                                       vision_layers=args.vision_layers)
        except ValueError as err:  # an unknown shape or a layer count it cannot have: one line, no traceback
            raise SystemExit(f"error: --shape {args.shape}: {err}") from None
        source = f"{args.shape} random weights ({args.layers or 'all'} layers)"
    size = model.get_vision_tower().config.image_size
    ids = prompts(max(args.batch_sizes) + args.n, model.config.text.vocab_size)
    px = torch.randn(len(ids), 3, size, size, generator=torch.Generator().manual_seed(1)).to(dev, dtype)

    def run(lo, hi):
        input_ids, mask = pad_sequences(ids[lo:hi], 0, side="left")
        with torch.inference_mode(), sdpa_kernels(args.sdpa_kernel):
            out = model.generate(input_ids.to(dev), mask.to(dev), px[lo:hi], reduction=red,
                                 max_new_tokens=args.new_tokens, eos_token_id=-1, pad_token_id=0)
        assert out.shape == (hi - lo, args.new_tokens)

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{source} on {name}, {dtype}; {args.n} prompts, "
          f"{args.new_tokens} new tokens each; reduction {red.method if red else 'none'}; sdpa kernel {args.sdpa_kernel}")
    rows = []
    warm = max(args.batch_sizes)
    for bs in args.batch_sizes:
        run(0, bs)  # warm-up batch (not timed)
        sync(dev)
        t0 = time.perf_counter()
        for lo in range(warm, warm + args.n, bs):
            run(lo, min(lo + bs, warm + args.n))
        sync(dev)
        wall = time.perf_counter() - t0
        rows.append({"batch_size": bs, "samples_per_s": args.n / wall, "ms_per_sample": 1000 * wall / args.n})
    base = rows[0]["samples_per_s"]
    print(f"{'batch':>5} {'samples/s':>10} {'ms/sample':>10} {'vs bs=' + str(rows[0]['batch_size']):>8}")
    for r in rows:
        r["ratio"] = r["samples_per_s"] / base
        print(f"{r['batch_size']:>5} {r['samples_per_s']:>10.2f} {r['ms_per_sample']:>10.1f} {r['ratio']:>7.2f}x")
    result = {"device": name, "dtype": str(dtype), "model": source,
              "new_tokens": args.new_tokens, "n": args.n, "reduction": red.method if red else "none", "rows": rows}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
