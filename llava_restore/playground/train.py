"""Train the playground mini-LLaVA from scratch on CPU (deterministic given the seed).

    python -m llava_restore.playground train [--data playground/data] [--out playground/cache/llava-playground]

A CLIP-style ViT (96x96 images, 4x4 patches -> 24x24 = 576 visual tokens, LLaVA-1.5's geometry),
the mlp2x_gelu projector and a LLaMA decoder with RoPE, trained jointly on the playground's
conversation JSON.  Saves a liuhaotian-format checkpoint (vision tower in a local sub-folder) that
``load_pretrained_model`` loads; logs loss/lr/throughput to TensorBoard; shows a progress bar.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from llava_restore.model.builder import save_pretrained
from llava_restore.tools.make_tiny import TinySpec, build_tiny
from llava_restore.train.data import Collator, SupervisedDataset

DEFAULT_OUT = "playground/cache/llava-playground"


@dataclass
class PlaygroundTrainConfig:
    data: str = "playground/data"
    out: str = DEFAULT_OUT
    train_file: str = "train/llava_playground_train.json"  # relative to data
    image_folder: str = ""  # relative to data ("" = data itself)
    seed: int = 0
    steps: int = 1200
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 60
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    vocab_size: int = 640
    vision_hidden: int = 64
    vision_layers: int = 3  # select layer -2 -> the first 2 layers are used
    vision_heads: int = 4
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 384
    max_length: int = 1024
    threads: int = 0  # 0 = torch default
    tb_dir: str = "runs/playground-train"
    log_every: int = 10


def lr_at(step: int, cfg: PlaygroundTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def ensure_data(cfg: PlaygroundTrainConfig) -> None:
    if not os.path.isfile(os.path.join(cfg.data, cfg.train_file)):
        from llava_restore.playground.data import build

        print(f"playground data not found under {cfg.data}; building it (deterministic, seed 0)")
        build(cfg.data)


def train(cfg: PlaygroundTrainConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ensure_data(cfg)
    from llava_restore.playground.data import corpus_texts

    torch.manual_seed(cfg.seed)
    spec = TinySpec(image_size=96, patch_size=4, vision_hidden=cfg.vision_hidden, vision_layers=cfg.vision_layers,
                    vision_heads=cfg.vision_heads, hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads,
                    kv_heads=cfg.kv_heads, intermediate=cfg.intermediate, vocab_size=cfg.vocab_size)
    tok, model, proc = build_tiny(spec, seed=cfg.seed, tokenizer_texts=corpus_texts(cfg.data))
    image_folder = os.path.join(cfg.data, cfg.image_folder)
    ds = SupervisedDataset(os.path.join(cfg.data, cfg.train_file), image_folder, tok, proc, max_length=cfg.max_length)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, collate_fn=Collator(tok.pad_token_id),
                        num_workers=0, drop_last=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"playground model: {n_params / 1e6:.2f}M parameters; {len(ds)} training records; {cfg.steps} steps")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    writer = SummaryWriter(cfg.tb_dir)
    model.train()
    step, t0, tokens, losses = 0, time.time(), 0, []
    n_trunc = 0
    bar = tqdm(total=cfg.steps, desc="train playground", unit="step")
    while step < cfg.steps:
        for batch in loader:
            if step >= cfg.steps:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            out = model(batch["input_ids"], batch["attention_mask"], batch["images"], labels=batch["labels"])
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            n_trunc += batch["n_truncated"]
            tokens += int(out.prepared.valid.sum())
            losses.append(out.loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                el = time.time() - t0
                writer.add_scalar("train/loss", sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:]), step)
                writer.add_scalar("train/lr", lr_at(step - 1, cfg), step)
                writer.add_scalar("train/tokens_per_s", tokens / el, step)
    bar.close()
    elapsed = time.time() - t0
    writer.close()
    model.eval()
    save_pretrained(model, cfg.out, tokenizer=tok, image_processor=proc, fmt="liuhaotian")
    summary = {"steps": cfg.steps, "train_seconds": round(elapsed, 1), "params": n_params,
               "final_loss": sum(losses[-20:]) / len(losses[-20:]), "first_loss": losses[0],
               "truncated_records": n_trunc, "config": asdict(cfg)}
    with open(os.path.join(cfg.out, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"saved {cfg.out} after {elapsed:.0f} s; loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}"
          + (f"; {n_trunc} records truncated to {cfg.max_length} tokens" if n_trunc else ""))
    return summary


def parse(argv=None) -> PlaygroundTrainConfig:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="key=value overrides of PlaygroundTrainConfig")
    ap.add_argument("--data")
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seed", type=int)
    args = ap.parse_args(argv)
    conf = OmegaConf.structured(PlaygroundTrainConfig)
    conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(args.overrides))
    for k in ("data", "out", "steps", "seed"):
        if getattr(args, k) is not None:
            conf[k] = getattr(args, k)
    return OmegaConf.to_object(conf)


def main(argv=None):
    train(parse(argv))


if __name__ == "__main__":
    main()
