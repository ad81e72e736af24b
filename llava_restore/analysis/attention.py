"""The attention figure: per decoder layer, the share of attention mass that goes to visual tokens.

    python -m llava_restore.analysis.attention --model-path M --question-file Q --image-folder I \
        [--method divprune --n-vis 64] [--num-samples 32] [--out runs/analysis/attention]

For every layer l and query i, the attention probabilities p_l(i, j) are computed with the eager
formula on the model's own q/k, *including* RESTORE's calibration terms when they are on
(``AttnContext.record_probs``; nothing is patched).  The visual share of query i is
``sum_{j visual} p_l(i, j)``, averaged over heads, then over

  (a) visual queries: the visual tokens themselves;
  (b) text queries: the text tokens after the image (instruction + "ASSISTANT:"); the text before
      the image cannot see it and is left out;

then over samples.  Variants (each on the same images and prompts):

  full          all N visual tokens, plain attention
  reindex       the base method pruned to n, contiguous positions, plain attention
  retain        the same pruning, original positions kept, plain attention
  retain_merge  RESTORE's tokens (prune + merge) at original positions, no calibration terms
  restore       RESTORE: prune + merge + retained positions + calibration (size and distance terms)

Writes attention.json (the numbers), attention.png (panel a and b) and a TensorBoard image.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from llava_restore.model.llama import KVCache
from llava_restore.reduction.config import ReductionConfig, make_reduction_config

from .plot import Panel, line_chart

VARIANTS: dict[str, Optional[dict]] = {
    "full": None,
    "reindex": {"restore": False},
    "retain": {"restore": False, "position_mode": "retain"},
    "retain_merge": {"restore": True, "size_term": False, "distance_term": False},
    "restore": {"restore": True},
}
LABELS = {"full": "full sequence", "reindex": "pruned, reindexed", "retain": "pruned, retained positions",
          "retain_merge": "prune+merge, retained, no calibration", "restore": "RESTORE (retain + calibration)"}


def variant_config(name: str, method: str, n_vis: int, opts: list[str]) -> Optional[ReductionConfig]:
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {list(VARIANTS)}")
    if VARIANTS[name] is None:
        return None
    cfg = make_reduction_config(list(opts), method=method, n_vis=n_vis, **VARIANTS[name])
    return cfg.resolve()


@dataclass
class LayerShares:
    """Per layer, summed over the batch: visual share x query count, and the query counts."""

    visual_sum: torch.Tensor  # (n_layers, B) sum over visual queries of their visual share
    visual_n: torch.Tensor  # (B,) number of visual queries
    text_sum: torch.Tensor  # (n_layers, B)
    text_n: torch.Tensor  # (B,)
    max_row_err: float  # max |sum_j p(i, j) - 1| over valid queries, heads, layers


class ShareRecorder:
    """The ``record_probs`` callback: reduces each layer's (B, H, L, L) probabilities at once."""

    def __init__(self, n_layers: int, visual: torch.Tensor, visual_q: torch.Tensor, text_q: torch.Tensor):
        B = visual.shape[0]
        self.visual = visual.float()  # (B, L) keys that are visual
        self.visual_q, self.text_q = visual_q.float(), text_q.float()  # (B, L) query groups
        self.valid_q = (visual_q | text_q)
        self.visual_sum = torch.zeros(n_layers, B, dtype=torch.float64)
        self.text_sum = torch.zeros(n_layers, B, dtype=torch.float64)
        self.max_row_err = 0.0

    def __call__(self, layer_idx: int, probs: torch.Tensor) -> None:
        share = (probs * self.visual[:, None, None, :]).sum(-1).mean(1)  # (B, Lq): head-averaged visual share
        self.visual_sum[layer_idx] = (share * self.visual_q).sum(-1).double().cpu()
        self.text_sum[layer_idx] = (share * self.text_q).sum(-1).double().cpu()
        rows = probs.sum(-1)  # (B, H, Lq)
        err = ((rows - 1).abs() * self.valid_q[:, None, :]).amax()
        self.max_row_err = max(self.max_row_err, float(err))

    def result(self) -> LayerShares:
        return LayerShares(self.visual_sum, self.visual_q.sum(-1).double().cpu(), self.text_sum,
                           self.text_q.sum(-1).double().cpu(), self.max_row_err)


def query_groups(visual: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(visual queries, text queries after the first visual token), both (B, L) bool."""
    after = torch.cumsum(visual.long(), dim=1) > 0  # (B, L): at or after the first visual token
    return visual & valid, valid & ~visual & after


@torch.no_grad()
def attention_shares(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor,
                     cfg: Optional[ReductionConfig]) -> LayerShares:
    """One prefill of a left-padded batch with the eager backend, recording every layer's shares.

    Uses the model's own preparation, attention context and decoder (``model.model``); only the
    context's ``record_probs`` is set."""
    cfg = None if cfg is None else cfg.resolve()
    prep = model.prepare_multimodal(input_ids, attention_mask, images, None, cfg, padding_side="left")
    meta = KVCache(key_valid=prep.valid, key_pos=prep.positions, key_log_size=prep.log_size,
                   key_log_size_l0=prep.log_size_l0, key_visual=prep.visual, next_pos=prep.next_pos)
    ctx = model._context(cfg, prep.positions, meta, decoding=False, backend="eager")
    vq, tq = query_groups(prep.visual, prep.valid)
    rec = ShareRecorder(len(model.model.layers), prep.visual, vq, tq)
    ctx.record_probs = rec
    model.model(prep.embeds, prep.positions, ctx, None)
    return rec.result()


# ----------------------------------------------------------------------------------- data
def load_batches(question_file: str, image_folder: str, tokenizer, processor, image_aspect_ratio: str,
                 conv_mode: str, num_samples: int, batch_size: int, device):
    """Yield (input_ids, attention_mask, images) of left-padded batches of the first questions."""
    from llava_restore.eval.model_vqa_loader import ADAPTER  # noqa: PLC0415
    from llava_restore.model.conversation import build_prompt  # noqa: PLC0415
    from llava_restore.model.mm_utils import pad_sequences, process_images, tokenizer_image_token  # noqa: PLC0415

    samples = ADAPTER.load(question_file, image_folder)[:num_samples]
    if not samples:
        raise ValueError(f"{question_file}: no questions")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        ids = [tokenizer_image_token(build_prompt(s.question, conv_mode), tokenizer, return_tensors="pt") for s in chunk]
        input_ids, mask = pad_sequences(ids, pad, side="left")
        images = process_images([s.image() for s in chunk], processor, image_aspect_ratio)
        yield input_ids.to(device), mask.to(device), images.to(device)


def run_analysis(model, batches, variants: list[str], method: str, n_vis: int, opts: list[str]) -> dict:
    """Average the per-sample, per-layer shares over all batches for every variant."""
    dtype = next(model.parameters()).dtype
    cfgs = {v: variant_config(v, method, n_vis, opts) for v in variants}
    acc = {v: {"vis": [], "txt": [], "err": 0.0} for v in variants}
    for input_ids, mask, images in batches:
        for v, cfg in cfgs.items():
            sh = attention_shares(model, input_ids, mask, images.to(dtype), cfg)
            acc[v]["vis"].append(sh.visual_sum / sh.visual_n.clamp(min=1))  # (n_layers, B) per-sample means
            acc[v]["txt"].append(sh.text_sum / sh.text_n.clamp(min=1))
            acc[v]["err"] = max(acc[v]["err"], sh.max_row_err)
    out = {}
    for v in variants:
        vis, txt = torch.cat(acc[v]["vis"], 1), torch.cat(acc[v]["txt"], 1)  # (n_layers, S)
        out[v] = {"label": LABELS[v], "reduction": None if cfgs[v] is None else asdict(cfgs[v]),
                  "visual_queries": vis.mean(1).tolist(), "text_queries": txt.mean(1).tolist(),
                  "visual_queries_std": vis.std(1, unbiased=False).tolist(),
                  "text_queries_std": txt.std(1, unbiased=False).tolist(),
                  "n_samples": vis.shape[1], "max_row_sum_error": acc[v]["err"]}
    if "full" in out:
        for v in variants:
            for q in ("visual_queries", "text_queries"):
                gap = [abs(a - b) for a, b in zip(out[v][q], out["full"][q])]
                out[v][f"{q}_mean_abs_gap_to_full"] = sum(gap) / len(gap)
    return out


def figure(result: dict, title: str, path: Path):
    panels = []
    for q, name in (("visual_queries", "(a) visual queries"), ("text_queries", "(b) text queries")):
        series = {r["label"]: [(float(i), y) for i, y in enumerate(r[q])] for r in result.values()}
        panels.append(Panel(title=f"{name}: {title}", xlabel="decoder layer", ylabel="attention to visual tokens",
                            series=series, ylim=(0.0, 1.0)))
    return line_chart(panels, path)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m llava_restore.analysis.attention", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--model-base", default=None)
    ap.add_argument("--question-file", required=True, help="LLaVA question jsonl ({question_id, image, text})")
    ap.add_argument("--image-folder", required=True)
    ap.add_argument("--conv-mode", default="vicuna_v1")
    ap.add_argument("--method", default="divprune")
    ap.add_argument("--n-vis", type=int, default=64)
    ap.add_argument("--reduction-opts", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra ReductionConfig fields for every reduced variant")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    ap.add_argument("--num-samples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="runs/analysis/attention")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from llava_restore.model.builder import load_pretrained_model  # noqa: PLC0415

    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"error: unknown variant {v!r}; known: {list(VARIANTS)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok, model, proc, _ = load_pretrained_model(args.model_path, args.model_base, device=device)
    model.eval()
    batches = list(load_batches(args.question_file, args.image_folder, tok, proc, model.config.image_aspect_ratio,
                                args.conv_mode, args.num_samples, args.batch_size, device))
    result = run_analysis(model, batches, variants, args.method, args.n_vis, args.reduction_opts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{args.method} n={args.n_vis}"
    img = figure(result, title, out / "attention.png")
    meta = {"model_path": args.model_path, "question_file": args.question_file, "method": args.method,
            "n_vis": args.n_vis, "reduction_opts": args.reduction_opts, "num_samples": args.num_samples,
            "query_groups": {"visual_queries": "the visual tokens", "text_queries": "text tokens after the image"}}
    (out / "attention.json").write_text(json.dumps({"meta": meta, "variants": result}, indent=1), encoding="utf-8")
    from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

    with SummaryWriter(log_dir=str(out / "tb")) as w:
        w.add_image(f"attention/visual_share_{args.method}_n{args.n_vis}", img, 0, dataformats="HWC")
        for v, r in result.items():
            for layer, (a, b) in enumerate(zip(r["visual_queries"], r["text_queries"])):
                w.add_scalar(f"attention/{v}/visual_queries", a, layer)  # step = decoder layer
                w.add_scalar(f"attention/{v}/text_queries", b, layer)
    print(f"{'variant':14s} {'vis-q gap':>9s} {'text-q gap':>10s}  (mean |share - full share| over layers)")
    for v, r in result.items():
        print(f"{v:14s} {r.get('visual_queries_mean_abs_gap_to_full', float('nan')):9.4f} "
              f"{r.get('text_queries_mean_abs_gap_to_full', float('nan')):10.4f}")
    print(f"wrote {out / 'attention.json'}, {out / 'attention.png'}, TensorBoard {out / 'tb'}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
