"""Train the playground mini-LLaVA from scratch on CPU (deterministic given the seed).

    python -m llava_restore.playground train [--data playground/data] [--out playground/cache/llava-playground]

A CLIP-style ViT (96x96 images, 4x4 patches -> 24x24 = 576 visual tokens, LLaVA-1.5's geometry),
the mlp2x_gelu projector and a LLaMA decoder with RoPE, trained in two stages:

1. the ViT alone, with per-patch colour / shape / size classification from the scenes' ground
   truth (a stand-in for CLIP's pre-training: without it the jointly trained model settles on
   the text prior and ignores the image);
2. LLaVA-style: the ViT frozen, the projector (rescaled so visual tokens start at the text
   embeddings' scale) and the decoder trained on the playground's conversation JSON.

Saves a liuhaotian-format checkpoint (vision tower in a local sub-folder) that
``load_pretrained_model`` loads; logs loss/lr/throughput to TensorBoard; shows a progress bar.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import List

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from llava_restore.model.builder import save_pretrained
from llava_restore.playground.grounding import (AttnInputs, grounding_loss, mention_answer_targets, patch_mask,
                                                query_spans, spliced_ids)
from llava_restore.reduction.config import ReductionConfig
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
    steps: int = 3200
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 60
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # the architecture (image 96 px, 4 px patches -> 576 tokens); override as model.hidden=..., etc.
    model: TinySpec = field(default_factory=lambda: TinySpec(
        vision_hidden=64, vision_layers=3,  # select layer -2 -> the first 2 layers are used
        vision_heads=4, hidden=128, layers=4, heads=4, kv_heads=4, intermediate=384, vocab_size=640))
    max_length: int = 1024
    threads: int = 0  # 0 = torch default
    # stage-2 autocast: "float32" (off) or "bfloat16" (weights and optimiser stay float32). On an
    # AVX512-BF16 CPU a step's compute is 1.36x faster at 576 tokens and 1.14x at ~140, but the
    # default recipe only trains 1166 s vs 1197 s (scripts/bench/playground_train_step.py, model card)
    autocast: str = "bfloat16"
    device: str = "cpu"  # the budget is CPU; "cuda" for exploratory sweeps
    workers: int = 0  # DataLoader workers for stage 2
    decoder_init_std: float = 0.09  # std of the projector/decoder weight matrices (LLaMA: 0.02; ~1/sqrt(hidden) learns lookups faster)
    tb_dir: str = "runs/playground-train"
    log_every: int = 10
    # stage 1: dense patch supervision of the ViT (our stand-in for CLIP pre-training)
    vision_pretrain_steps: int = 800
    vision_pretrain_batch: int = 32
    vision_lr: float = 2e-3
    vision_warmup: int = 30
    vision_fg_weight: float = 3.0  # loss weight of object/text patches relative to background ones
    # weight of stage 1's image-level objective (0 = off): a linear head on the mean of all patch
    # features predicts which colour-shape pairs the image holds (multi-label), as a caption-trained
    # CLIP's pooled features would. Additive per-patch colour and shape codes cannot give that (the
    # mean of "red" + "square" and "blue" + "circle" equals that of "red" + "circle" and "blue" + "square"),
    # so the ViT must bind colour to shape in its patch features
    vision_bag_weight: float = 0.0
    # 0: stage 1 reads the training images; N > 0: it renders fresh scenes of up to N objects on the
    # fly (seeded; more object patches per step and no repeats)
    vision_scene_objects: int = 0
    # stage-1 start of the ViT's (learned) position embeddings: "random" (CLIP's init) or "sincos"
    # (2-D sine-cosine of the patch's row and column, as in MAE): a grid structure from step 0
    vision_pos_init: str = "random"
    # "" = run stage 1; a folder = load the ViT from it (a checkpoint's vision_tower/ sub-folder, e.g.
    # playground/cache/llava-playground/vision_tower) and skip stage 1 (its steps are then ignored)
    vision_init: str = ""
    # stage 2: LLaVA-style, vision tower frozen; projector rescaled to the text-embedding scale
    freeze_vision: bool = True
    projector_rescale: bool = True
    # optional token reduction during stage 2 (e.g. method=divprune n_vis=144 position_mode=retain),
    # switched off for the last ``full_token_steps`` steps so the model ends on all 576 tokens
    train_reduction: ReductionConfig = field(default_factory=ReductionConfig)
    full_token_steps: int = 0
    # the first N stage-2 steps keep only the visual tokens of patches covered by an object or a
    # text (from the scenes' ground truth, scenes/<part>.jsonl), at their original positions: ~10%
    # of the tokens, so cheaper steps that are not diluted by background (0 = off)
    foreground_steps: int = 2600
    # ... plus this fraction of the background patches, drawn at random per image and step (seeded),
    # so the model meets background tokens and still works on all 576 afterwards
    foreground_background: float = 0.15
    # the first N stage-2 steps train on single-turn select/existence questions generated from the
    # training scenes (llava_restore/playground/warmup.py), then the training file (0 = off)
    warmup_steps: int = 0
    warmup_per_image: int = 2
    # attention supervision (llava_restore/playground/grounding.py): weight 0 = off
    ground_weight: float = 0.0
    ground_layers: List[int] = field(default_factory=lambda: [-2, -1])
    ground_file: str = "train/llava_playground_train_grounding.json"  # relative to data
    ground_from_mention: bool = False  # also supervise the question positions from its last object word on
    # hop-1 aid (grounding.mention_answer_targets): the question's last object word also predicts the
    # answer's first token, with this loss weight (0 = off); see playground/README.md
    aux_weight: float = 1.0
    # every N stage-2 steps, save the model so far to ``out`` (its train_summary.json says
    # "complete": false and the step); 0 = only at the end
    save_every: int = 400


def lr_at(step: int, cfg: PlaygroundTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def patch_labels(scene: dict, grid: int, patch: int) -> torch.Tensor:
    """(3, grid*grid) long: colour, shape (text = its own class) and size of what covers each
    patch centre (0 = background), from the scene's ground truth."""
    from llava_restore.playground import vocab

    colors, shapes, sizes = list(vocab.COLORS), list(vocab.SHAPES) + ["text"], ["small", "large"]
    lab = torch.zeros(3, grid * grid, dtype=torch.long)
    items = [(o["x"], o["y"], o["w"], o["w"], o["color"], o["shape"], o["size"]) for o in scene["objects"]]
    items += [(t["x"], t["y"], t["w"], t["h"], t["color"], "text", None) for t in scene["texts"]]
    for x, y, w, h, color, shape, size in items:
        m = patch_mask([[x, y, w, h]], grid, patch, "cpu")
        lab[0][m] = colors.index(color) + 1
        lab[1][m] = shapes.index(shape) + 1
        lab[2][m] = 0 if size is None else sizes.index(size) + 1
    return lab


def pair_bag(scene: dict) -> torch.Tensor:
    """(len(COLORS) * len(SHAPES),) float: 1 where the scene holds an object of that colour and shape."""
    from llava_restore.playground import vocab

    colors, shapes = list(vocab.COLORS), list(vocab.SHAPES)
    bag = torch.zeros(len(colors) * len(shapes))
    for o in scene["objects"]:
        bag[colors.index(o["color"]) * len(shapes) + shapes.index(o["shape"])] = 1.0
    return bag


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """(grid*grid, dim): half the channels encode the row, half the column, each as sin/cos pairs
    at ``dim // 4`` geometric frequencies (MAE's fixed 2-D embedding)."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs a dim divisible by 4, got {dim}")
    freq = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4)))  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for coord in (rows.flatten(), cols.flatten()):
        ang = coord[:, None] * freq[None, :]  # (grid*grid, dim/4)
        parts += [ang.sin(), ang.cos()]
    return torch.cat(parts, dim=1).float()


def init_vision_positions(tower, how: str) -> None:
    """Overwrite the ViT's patch position embeddings (the CLS row is kept) with ``how``."""
    if how == "random":
        return
    if how != "sincos":
        raise ValueError(f"vision_pos_init {how!r} is not one of ['random', 'sincos']")
    emb = tower.vision_tower.embeddings.position_embedding.weight  # (1 + grid*grid, D)
    grid = tower.grid_hw[0]
    with torch.no_grad():
        emb[1:] = sincos_2d(grid, emb.shape[1]).to(emb)


def pretrain_vision(model, proc, cfg: PlaygroundTrainConfig, writer) -> float:
    """Stage 1: per-patch colour/shape/size classification on the ViT's selected-layer features."""
    from llava_restore.model.mm_utils import load_image, process_images
    from llava_restore.playground import vocab

    tower = model.get_vision_tower()
    grid = tower.grid_hw[0]
    init_vision_positions(tower, cfg.vision_pos_init)
    with open(os.path.join(cfg.data, "scenes", "train.jsonl")) as f:
        scenes = [json.loads(line) for line in f]
    if cfg.vision_scene_objects > 0:
        import random
        from dataclasses import replace

        from llava_restore.playground.config import TRAIN
        from llava_restore.playground.render import render
        from llava_restore.playground.scene import sample_scene

        dense = replace(TRAIN, min_objects=max(TRAIN.min_objects, cfg.vision_scene_objects // 2),
                        max_objects=cfg.vision_scene_objects, motion_prob=0.0, favour_prob=0.0)
        rng = random.Random(cfg.seed + 1)
    heads = torch.nn.ModuleList([torch.nn.Linear(tower.hidden_size, n + 1) for n in
                                 (len(vocab.COLORS), len(vocab.SHAPES) + 1, 2)]).to(cfg.device)
    params = list(tower.parameters()) + list(heads.parameters())
    if cfg.vision_bag_weight > 0:  # created only when used, so the default run's random stream is unchanged
        bag_head = torch.nn.Linear(tower.hidden_size, len(vocab.COLORS) * len(vocab.SHAPES)).to(cfg.device)
        params += list(bag_head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    tower.train()
    loss_v = float("nan")
    for step in tqdm(range(cfg.vision_pretrain_steps), desc="stage 1: ViT patch pre-training", unit="step"):
        if cfg.vision_scene_objects > 0:
            drawn = [sample_scene(rng, dense) for _ in range(cfg.vision_pretrain_batch)]
            imgs, batch_scenes = [render(sc) for sc in drawn], [sc.to_dict() for sc in drawn]
        else:
            idx = torch.randint(len(scenes), (cfg.vision_pretrain_batch,), generator=gen).tolist()
            imgs = [load_image(os.path.join(cfg.data, scenes[i]["image"])) for i in idx]
            batch_scenes = [scenes[i]["scene"] for i in idx]
        px = process_images(imgs, proc, model.config.image_aspect_ratio).to(cfg.device)
        labels = torch.stack([patch_labels(sc, grid, tower.config.patch_size) for sc in batch_scenes]).to(cfg.device)  # (B, 3, N)
        feats = tower(px).features  # (B, N, Dv)
        lr = cfg.vision_lr * min(1.0, (step + 1) / cfg.vision_warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.vision_pretrain_steps))
        for g in opt.param_groups:
            g["lr"] = lr
        w = 1.0 + (cfg.vision_fg_weight - 1.0) * (labels[:, 1] > 0).float().flatten()  # (B*N,)
        loss = sum((w * torch.nn.functional.cross_entropy(h(feats).flatten(0, 1), labels[:, k].flatten(),
                                                          reduction="none")).sum() / w.sum()
                   for k, h in enumerate(heads))
        if cfg.vision_bag_weight > 0:
            bags = torch.stack([pair_bag(sc) for sc in batch_scenes]).to(cfg.device)  # (B, C*S)
            bag_logits = bag_head(feats.mean(1))  # (B, C*S)
            bag_loss = torch.nn.functional.binary_cross_entropy_with_logits(bag_logits, bags)
            loss = loss + cfg.vision_bag_weight * bag_loss
            bag_err = ((bag_logits > 0).float() != bags).any(1).float().mean().item()  # images with any pair wrong
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_v = loss.item()
        if (step + 1) % cfg.log_every == 0:
            writer.add_scalar("vision_pretrain/loss", loss_v, step + 1)
            if cfg.vision_bag_weight > 0:
                writer.add_scalar("vision_pretrain/bag_loss", bag_loss.item(), step + 1)
                writer.add_scalar("vision_pretrain/bag_image_error", bag_err, step + 1)
        if cfg.vision_bag_weight > 0 and (step + 1) % 50 == 0:
            print(f"stage 1 step {step + 1}: loss {loss_v:.3f} bag loss {bag_loss.item():.3f} "
                  f"images with a wrong pair {bag_err:.2f}", flush=True)
    tower.eval()
    return loss_v


@torch.no_grad()
def rescale_projector(model, proc, cfg: PlaygroundTrainConfig) -> float:
    """Scale the projector's last layer so visual tokens start at the text embeddings' scale."""
    from llava_restore.model.mm_utils import load_image, process_images

    with open(os.path.join(cfg.data, "scenes", "train.jsonl")) as f:
        paths = [json.loads(line)["image"] for _, line in zip(range(16), f)]
    px = process_images([load_image(os.path.join(cfg.data, p)) for p in paths], proc, model.config.image_aspect_ratio)
    _, proj, _ = model.encode_images(px.to(cfg.device))
    factor = model.model.embed_tokens.weight.std().item() / proj.std().item()
    last = [m for m in model.model.mm_projector.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.weight.mul_(factor)
    last.bias.mul_(factor)
    return factor


def load_vision(tower, folder: str) -> None:
    """Load the ViT weights saved in ``folder`` (a checkpoint's vision tower sub-folder, either key layout)
    into ``tower``."""
    from llava_restore.model.checkpoint import load_vision_tower_weights
    from llava_restore.model.config import CheckpointError

    path = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vision_init={folder!r}: no model.safetensors there (expected a checkpoint's "
                                "vision_tower/ sub-folder)")
    try:
        load_vision_tower_weights(tower, folder)
    except CheckpointError as err:
        raise ValueError(f"vision_init={folder!r} does not fit this model's ViT (model.vision_*): {err}") from None


def ensure_data(cfg: PlaygroundTrainConfig) -> None:
    if not os.path.isfile(os.path.join(cfg.data, cfg.train_file)):
        from llava_restore.playground.data import build

        print(f"playground data not found under {cfg.data}; building it (deterministic, seed 0)")
        build(cfg.data)


def _option_ids(tok) -> torch.Tensor:
    """Token ids of the option letters a multiple-choice answer starts with."""
    return torch.tensor(sorted({tok.encode(c, add_special_tokens=False)[0] for c in "ABCDEF"}))


def _mention_ids(tok) -> torch.Tensor:
    """Token ids of the words that name objects in questions (colours, shapes). Not 'object': in
    "What shape is the red object?" the aid belongs on 'red', the word that picks the object."""
    from llava_restore.playground import vocab

    words = list(vocab.COLORS) + list(vocab.SHAPES) + list(vocab.PLURALS.values())
    return torch.tensor(sorted({tok.encode(w, add_special_tokens=False)[-1] for w in words}))


class _WithSideInfo(torch.utils.data.Dataset):
    """(Example, {"grounding": per-turn boxes, "keep": foreground patch indices}) pairs: the LLaVA
    dataset plus the grounding side file and/or the scenes (either may be None)."""

    def __init__(self, ds: SupervisedDataset, boxes: dict | None, scenes: dict | None, grid: int, patch: int):
        self.ds, self.boxes, self.scenes, self.grid, self.patch = ds, boxes, scenes, grid, patch

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        rec = self.ds.records[i]
        side = {"grounding": self.boxes.get(rec.get("id"), []) if self.boxes is not None else []}
        if self.scenes is not None and rec.get("image") is None:
            side["keep"] = None  # a text-only record
        elif self.scenes is not None:
            scene = self.scenes.get(rec["image"])
            if scene is None:
                raise KeyError(f"foreground_steps: no scene for image {rec.get('image')!r} (record {rec.get('id')!r}) "
                               "in the scenes files; rebuild the data")
            fg = (patch_labels(scene, self.grid, self.patch) != 0).any(0).nonzero(as_tuple=True)[0]
            side["keep"] = fg if len(fg) else torch.arange(self.grid * self.grid)  # an empty scene keeps all
        return self.ds[i], side


class _SideInfoCollator:
    def __init__(self, pad_id: int):
        self.base = Collator(pad_id)

    def __call__(self, items):
        out = {**self.base([e for e, _ in items]), "grounding": [s["grounding"] for _, s in items]}
        if "keep" in items[0][1]:  # one index list per image (text-only records have none)
            out["keep"] = [s["keep"] for e, s in items if e.image is not None]
        return out


def with_background(fg: torch.Tensor, n_patches: int, frac: float, gen: torch.Generator) -> torch.Tensor:
    """The sorted union of ``fg`` and a random ``frac`` of the other patch indices in [0, n_patches)."""
    if frac <= 0:
        return fg
    bg = torch.ones(n_patches, dtype=torch.bool)
    bg[fg] = False
    bg = bg.nonzero(as_tuple=True)[0]
    extra = bg[torch.randperm(len(bg), generator=gen)[:round(frac * len(bg))]]
    return torch.cat([fg, extra]).sort().values


def _cycle(loader):
    """Endless batches: one reshuffled epoch after another."""
    while True:
        yield from loader


def _load_scenes(data: str) -> dict:
    """image path (relative to the data folder) -> scene, from every ``scenes/*.jsonl``."""
    folder = os.path.join(data, "scenes")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"foreground_steps needs the scenes under {folder}; rebuild the data "
                                "(python -m llava_restore.playground build --force)")
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".jsonl"):
            with open(os.path.join(folder, name)) as f:
                for n, line in enumerate(f, 1):
                    try:
                        rec = json.loads(line)
                        out[rec["image"]] = rec["scene"]
                    except (json.JSONDecodeError, KeyError) as err:
                        raise ValueError(f"{os.path.join(folder, name)} line {n}: not a scene record ({err})") from None
    return out


def _save(model, tok, proc, cfg: PlaygroundTrainConfig, summary: dict) -> None:
    """The checkpoint (liuhaotian format) and its train_summary.json, written to ``cfg.out``."""
    save_pretrained(model, cfg.out, tokenizer=tok, image_processor=proc, fmt="liuhaotian")
    with open(os.path.join(cfg.out, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


def train(cfg: PlaygroundTrainConfig, on_step=None) -> dict:
    """``on_step(step, model, tokenizer, image_processor, {"loss", "ground", "aux", "visual_tokens"})``, if
    given, is called after every optimiser step (evaluation hooks)."""
    if cfg.autocast not in ("float32", "bfloat16"):
        raise ValueError(f"autocast={cfg.autocast!r} is not one of ['float32', 'bfloat16']")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ensure_data(cfg)
    from llava_restore.playground.data import corpus_texts

    torch.manual_seed(cfg.seed)
    tok, model, proc = build_tiny(cfg.model, seed=cfg.seed, tokenizer_texts=corpus_texts(cfg.data),
                                  init_std=cfg.decoder_init_std)
    model.to(cfg.device)
    image_folder = os.path.join(cfg.data, cfg.image_folder)
    ds = SupervisedDataset(os.path.join(cfg.data, cfg.train_file), image_folder, tok, proc, max_length=cfg.max_length)
    warm_ds = None
    if cfg.warmup_steps > 0:
        from llava_restore.playground.warmup import warmup_records

        scenes = _load_scenes(cfg.data)
        train_images = sorted({r["image"] for r in ds.records if "image" in r})
        missing = [im for im in train_images if im not in scenes]
        if missing:
            raise KeyError(f"warmup_steps: no scene for {len(missing)} training images, e.g. {missing[0]!r}; rebuild the data")
        recs = warmup_records({im: scenes[im] for im in train_images}, seed=cfg.seed, per_image=cfg.warmup_per_image)
        warm_ds = SupervisedDataset("<warm-up records from the training scenes>", image_folder, tok, proc,
                                    max_length=cfg.max_length, records=recs)
    gen = torch.Generator().manual_seed(cfg.seed)
    collate = Collator(tok.pad_token_id)
    grid, patch = model.get_vision_tower().grid_hw[0], model.get_vision_tower().config.patch_size
    if cfg.ground_weight > 0 or cfg.foreground_steps > 0:
        boxes = None
        if cfg.ground_weight > 0:
            gpath = os.path.join(cfg.data, cfg.ground_file)
            if not os.path.isfile(gpath):
                raise FileNotFoundError(f"ground_weight={cfg.ground_weight} needs the grounding side file {gpath}; "
                                        "rebuild the data (python -m llava_restore.playground build --force)")
            with open(gpath) as f:
                boxes = json.load(f)
        scenes = _load_scenes(cfg.data) if cfg.foreground_steps > 0 else None
        ds = _WithSideInfo(ds, boxes, scenes, grid, patch)
        if warm_ds is not None:
            warm_ds = _WithSideInfo(warm_ds, {}, scenes, grid, patch)
        collate = _SideInfoCollator(tok.pad_token_id)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, collate_fn=collate,
                        num_workers=cfg.workers, drop_last=True)
    warm_loader = None if warm_ds is None else DataLoader(
        warm_ds, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(cfg.seed + 2),
        collate_fn=collate, num_workers=cfg.workers, drop_last=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"playground model: {n_params / 1e6:.2f}M parameters; {len(ds)} training records; {cfg.steps} steps")
    writer = SummaryWriter(cfg.tb_dir)
    t_start = time.time()
    vision_loss = None
    if cfg.vision_init:
        load_vision(model.get_vision_tower(), cfg.vision_init)
    elif cfg.vision_pretrain_steps > 0:
        vision_loss = pretrain_vision(model, proc, cfg, writer)
    t_stage1 = time.time() - t_start
    if cfg.freeze_vision:
        model.get_vision_tower().requires_grad_(False)
    scale = rescale_projector(model, proc, cfg) if cfg.projector_rescale else 1.0
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    model.train()
    if cfg.freeze_vision:
        model.get_vision_tower().eval()
    r = cfg.train_reduction
    train_red = None if (r.method == "none" and r.n_vis is None) else r.resolve()
    cap = AttnInputs(model, cfg.ground_layers) if cfg.ground_weight > 0 else None
    mention_ids, option_ids = _mention_ids(tok).to(cfg.device), _option_ids(tok).to(cfg.device)
    if cfg.foreground_steps > 0 and train_red is not None:
        raise ValueError("foreground_steps and train_reduction are exclusive; set one of them")
    if not 0.0 <= cfg.foreground_background <= 1.0:
        raise ValueError(f"foreground_background={cfg.foreground_background} must be in [0, 1]")
    if 0 < cfg.steps <= cfg.foreground_steps:
        print(f"warning: foreground_steps={cfg.foreground_steps} >= steps={cfg.steps}: every stage-2 step sees only "
              "foreground (+ sampled background) tokens, never all of them; lower foreground_steps to end on full tokens")
    amp = dict(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.autocast == "bfloat16")
    bg_gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, t0, tokens, losses, glosses, auxes = 0, time.time(), 0, [], [], []
    n_trunc = 0
    bar = tqdm(total=cfg.steps, desc="stage 2: LLaVA training", unit="step")
    main_it, warm_it = _cycle(loader), None if warm_loader is None else _cycle(warm_loader)
    while step < cfg.steps:
        batch = next(warm_it) if step < cfg.warmup_steps else next(main_it)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        dev = {k: None if batch[k] is None else batch[k].to(cfg.device)
               for k in ("input_ids", "attention_mask", "images", "labels")}
        red = train_red if step < cfg.steps - cfg.full_token_steps else None
        keep = None
        if step < cfg.foreground_steps:
            keep = [with_background(k, grid * grid, cfg.foreground_background, bg_gen) for k in batch["keep"]]
        with torch.autocast(**amp):
            out = model(dev["input_ids"], dev["attention_mask"], dev["images"], labels=dev["labels"], reduction=red,
                        visual_keep=keep)
        loss = out.loss
        ids_sp = None  # the text id at each spliced position, when a mention-based target needs it
        if cfg.aux_weight > 0 or (cap is not None and cfg.ground_from_mention):
            ids_sp = spliced_ids(dev["input_ids"], dev["attention_mask"], out.prepared)
        if cap is not None:
            spans = None
            if cfg.ground_from_mention:
                spans = query_spans(ids_sp, out.prepared.labels, mention_ids, True)
            g = grounding_loss(cap, out.prepared, batch["grounding"], grid, patch, spans=spans)
            cap.clear()
            if g is not None:
                loss = loss + cfg.ground_weight * g
                glosses.append(g.item())
        if cfg.aux_weight > 0:
            rows, pos, tgt = mention_answer_targets(ids_sp, out.prepared.labels, mention_ids, option_ids)
            if len(rows):
                aux = torch.nn.functional.cross_entropy(out.logits[rows, pos].float(), tgt)
                loss = loss + cfg.aux_weight * aux
                auxes.append(aux.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()
        n_trunc += batch["n_truncated"]
        tokens += int(out.prepared.valid.sum())
        losses.append(out.loss.item())
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}", **({"ground": f"{glosses[-1]:.2f}"} if glosses else {}),
                        **({"aux": f"{auxes[-1]:.2f}"} if auxes else {}))
        if step % cfg.log_every == 0 or step == cfg.steps:
            el = time.time() - t0
            writer.add_scalar("train/loss", sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:]), step)
            writer.add_scalar("train/lr", lr_at(step - 1, cfg), step)
            writer.add_scalar("train/tokens_per_s", tokens / el, step)
            if glosses:
                writer.add_scalar("train/ground_loss", sum(glosses[-cfg.log_every:]) / len(glosses[-cfg.log_every:]), step)
            if auxes:
                writer.add_scalar("train/aux_loss", sum(auxes[-cfg.log_every:]) / len(auxes[-cfg.log_every:]), step)
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            _save(model, tok, proc, cfg, {"complete": False, "steps_done": step, "seconds_so_far": round(time.time() - t_start, 1),
                                          "loss_so_far": sum(losses[-20:]) / len(losses[-20:]), "config": asdict(cfg)})
            model.train()
            if cfg.freeze_vision:
                model.get_vision_tower().eval()
        if on_step is not None:
            n_img = max(1, len(out.prepared.reductions))
            on_step(step, model, tok, proc, {"loss": losses[-1], "ground": glosses[-1] if glosses else None,
                                             "aux": auxes[-1] if auxes else None,
                                             "visual_tokens": int(out.prepared.visual.sum()) / n_img})
    bar.close()
    if cap is not None:
        cap.close()
    elapsed = time.time() - t_start
    writer.close()
    model.eval().cpu()
    summary = {"complete": True, "steps": cfg.steps, "train_seconds": round(elapsed, 1), "stage1_seconds": round(t_stage1, 1),
               "stage1_final_loss": vision_loss, "projector_scale": scale, "params": n_params,
               "final_loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
               "first_loss": losses[0] if losses else None,
               "final_ground_loss": sum(glosses[-20:]) / len(glosses[-20:]) if glosses else None,
               "final_aux_loss": sum(auxes[-20:]) / len(auxes[-20:]) if auxes else None,
               "truncated_records": n_trunc, "config": asdict(cfg)}
    _save(model, tok, proc, cfg, summary)
    print(f"saved {cfg.out} after {elapsed:.0f} s"
          + (f"; loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}" if losses else "; no stage-2 steps")
          + (f"; {n_trunc} records truncated to {cfg.max_length} tokens" if n_trunc else ""))
    return summary


# Named recipes: overrides of the defaults (which reproduce the committed checkpoint). "short" fits in
# 20 minutes on a 2-core CPU, for smoke tests and quick retraining (model card: its time and accuracy).
RECIPES = {
    "committed": {},
    "short": {"vision_pretrain_steps": 300, "steps": 700, "foreground_steps": 620, "save_every": 0},
}


def parse(argv=None) -> PlaygroundTrainConfig:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="key=value overrides of PlaygroundTrainConfig")
    ap.add_argument("--data")
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--recipe", default="committed", choices=sorted(RECIPES),
                    help="committed = the defaults (the committed checkpoint); short = <= 20 CPU-minutes")
    args = ap.parse_intermixed_args(argv)  # key=value overrides may come before, between or after the options
    conf = OmegaConf.structured(PlaygroundTrainConfig)
    conf = OmegaConf.merge(conf, OmegaConf.create(RECIPES[args.recipe]), OmegaConf.from_dotlist(args.overrides))
    for k in ("data", "out", "steps", "seed"):
        if getattr(args, k) is not None:
            conf[k] = getattr(args, k)
    return OmegaConf.to_object(conf)


def main(argv=None):
    train(parse(argv))


if __name__ == "__main__":
    main()
