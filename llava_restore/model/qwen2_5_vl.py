"""Qwen2.5-VL with RESTORE: transformers' vision encoder -> [per-image reduction] -> our M-RoPE decoder.

The decoder is ``llama.py``'s (same ``AttnContext`` and attention backends, so RESTORE's size and
distance terms plug in unchanged) with Qwen2's differences: q/k/v biases (o_proj none) and M-RoPE,
where rotary frequency k rotates by the token's position on axis(k) of (t, h, w) (``mrope_section``).
Parameter names follow the hub layout (``model.layers.*``, ``visual.*``, ``lm_head``), so
Qwen/Qwen2.5-VL-*-Instruct folders load unchanged.

Inputs: ``input_ids`` hold, per image, either one image placeholder (``image_token_id`` or
``IMAGE_TOKEN_INDEX``, expanded here to the image's N merged tokens) or exactly N of them (the HF
processor's expansion); images come as the processor's ``pixel_values`` (sum of patches, C*T*p*p)
and ``image_grid_thw`` (I, 3).  N = t*h*w / merge^2 is read from ``image_grid_thw`` per image, so
images of different sizes mix freely in one batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llava_restore.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_restore.reduction.config import ReductionConfig
from llava_restore.reduction.mrope import section_axes, visual_mrope_ids
from llava_restore.reduction.types import ReductionResult

from .attention import AttnContext
from .checkpoint import assign_decoder_weights
from .config import CheckpointError, TextConfig
from .decoding import decode
from .llama import KVCache, LlamaAttention, LlamaDecoderLayer, RMSNorm


# ------------------------------------------------------------------------------------- config
@dataclass
class QwenVLConfig:
    text: TextConfig
    mrope_section: tuple[int, int, int]
    vision_config: dict
    image_token_id: int
    video_token_id: int | None
    vision_start_token_id: int | None
    vision_end_token_id: int | None
    spatial_merge_size: int
    source_format: str = "qwen2_5_vl"
    mrope_interleaved: bool = False  # Qwen3-VL

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> "QwenVLConfig":
        """transformers 5 (``text_config``) and 4.x (text fields at the top, ``rope_scaling``) layouts."""
        t = dict(raw.get("text_config") or raw)
        rope = dict(t.get("rope_parameters") or t.get("rope_scaling") or raw.get("rope_scaling") or {})
        section = rope.get("mrope_section")
        if not section:
            raise CheckpointError(f"{where}: Qwen2.5-VL config has no mrope_section in rope_parameters/rope_scaling")
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", "mrope"):
            raise CheckpointError(f"{where}: rope type {rope} is not supported (Qwen2.5-VL uses default M-RoPE)")
        if t.get("use_sliding_window"):
            raise CheckpointError(f"{where}: use_sliding_window=true is not supported (Qwen2.5-VL ships false)")
        theta = float(t.get("rope_theta") or rope.get("rope_theta") or raw.get("rope_theta") or 1e6)
        clean = {k: v for k, v in t.items() if k not in ("rope_scaling", "rope_parameters", "head_dim")}
        clean.update(rope_theta=theta, attention_bias=True, mlp_bias=False)
        clean.setdefault("tie_word_embeddings", raw.get("tie_word_embeddings", False))
        text = TextConfig.from_dict(clean, where)  # head_dim = hidden / heads, as Qwen2.5-VL computes it
        vision = dict(raw.get("vision_config") or {})
        if not vision:
            raise CheckpointError(f"{where}: Qwen2.5-VL config has no vision_config")
        if "image_token_id" not in raw:
            raise CheckpointError(f"{where}: Qwen2.5-VL config has no image_token_id")
        section = tuple(int(s) for s in section)
        try:
            section_axes(section, text.head_dim)
        except ValueError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        return cls(text=text, mrope_section=section, vision_config=vision, image_token_id=int(raw["image_token_id"]),
                   video_token_id=raw.get("video_token_id"), vision_start_token_id=raw.get("vision_start_token_id"),
                   vision_end_token_id=raw.get("vision_end_token_id"),
                   spatial_merge_size=int(vision.get("spatial_merge_size", 2)))


QWEN_MODEL_TYPES = ("qwen2_5_vl", "qwen3_vl")  # config model_type of the folders this module's models load


def is_qwen2_5_vl_config(raw: dict) -> bool:
    """Recognised by config fields: model_type qwen2_5_vl (the vision tower's own config names the same)."""
    return raw.get("model_type") == "qwen2_5_vl"


# ------------------------------------------------------------------------------------ decoder
def mrope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, section, dtype: torch.dtype,
                  interleaved: bool = False):
    """positions (B, L, 3) float (t, h, w) -> cos, sin (B, 1, L, head_dim): frequency k uses axis(k)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    axes = section_axes(section, head_dim, positions.device, interleaved)  # (d/2,)
    freqs = positions.float()[:, :, axes] * inv_freq[None, None, :]  # (B, L, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, L, d)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


class QwenAttention(LlamaAttention):
    """LLaMA attention with q/k/v biases and a bias-free o_proj (Qwen2)."""

    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)


class QwenDecoderLayer(LlamaDecoderLayer):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.self_attn = QwenAttention(cfg, layer_idx)


class QwenDecoder(nn.Module):
    """embed_tokens + layers + norm (``model.`` of the hub layout), M-RoPE positions (B, L, 3)."""

    def __init__(self, cfg: TextConfig, mrope_section, interleaved: bool = False, layer_cls=QwenDecoderLayer):
        super().__init__()
        self.cfg, self.mrope_section, self.interleaved = cfg, tuple(mrope_section), interleaved
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(layer_cls(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h: torch.Tensor, positions: torch.Tensor, ctx: AttnContext, cache: KVCache | None = None,
                inject: list[torch.Tensor] | None = None):
        """h (B, L, D), positions (B, L, 3) float -> (B, L, D).  ``inject`` (Qwen3-VL's DeepStack): per
        layer i < len(inject), (B, L, D) added to the output of layer i (0 off the visual tokens)."""
        cos, sin = mrope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, self.mrope_section, h.dtype,
                                 self.interleaved)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, ctx, cache)
            if inject is not None and i < len(inject):
                h = h + inject[i].to(h.dtype)
        return self.norm(h)


# ------------------------------------------------------------------------------------- vision
@dataclass
class QwenImages:
    """The image processor's outputs for I images: pixel_values (sum_i t*h*w, C*T*p*p), grid_thw (I, 3)."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor

    def __len__(self) -> int:
        return self.grid_thw.shape[0]


@dataclass
class ImageTokens:
    """One image after the tower: N merged tokens on an (h, w) grid (raster order)."""

    feats: torch.Tensor  # (N, D) merged (post-``merger``) tokens
    grid_hw: tuple[int, int]
    importance: torch.Tensor | None = None  # (N,) attention received in the last block (CLS-free signal)
    merger_in: torch.Tensor | None = None  # (N, merge^2 * Dv) the merger MLP's input
    keys: torch.Tensor | None = None  # (N, dk) last block's keys, head mean, mean over the merge unit
    deepstack: list[torch.Tensor] | None = None  # Qwen3-VL: per DeepStack level (N, D), injected into the LLM


PROBS_BLOCK = 1 << 26  # elements of one block of recomputed vision attention probabilities (256 MB in fp32)


def _last_block_stats(attn: nn.Module, hidden: torch.Tensor, cu_seqlens: torch.Tensor, pos_emb, rotary) -> tuple:
    """From the last vision block's attention input (L, Dv) (tower order): per patch the attention it
    receives (mean over heads and over the queries of its attention chunk) (L,) and its keys (head
    mean, before the rotary embedding) (L, dh).  ``rotary``: the tower's apply_rotary_pos_emb_vision."""
    L = hidden.shape[0]
    q, k, _ = attn.qkv(hidden).reshape(L, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # (L, H, dh)
    keys = k.float().mean(1)  # (L, dh)
    cos, sin = pos_emb
    q, k = rotary(q, k, cos, sin)
    received = torch.zeros(L, dtype=torch.float32, device=hidden.device)
    bounds = cu_seqlens.tolist()
    H = q.shape[1]
    for s, e in zip(bounds[:-1], bounds[1:]):
        ks = k[s:e].transpose(0, 1).float()  # (H, l, dh)
        step = max(1, PROBS_BLOCK // (H * (e - s)))  # query rows per block: (H, step, l) probabilities at a time
        for r in range(s, e, step):
            qs = q[r:min(r + step, e)].transpose(0, 1).float()  # (H, rows, dh)
            probs = torch.softmax(qs @ ks.transpose(-1, -2) * attn.scaling, dim=-1)  # (H, rows, l)
            received[s:e] += probs.sum(dim=(0, 1))
        received[s:e] /= H * (e - s)  # mean over heads and over the chunk's queries
    return received, keys


@dataclass
class TowerSpec:
    """How one family's transformers vision tower is read (Qwen2.5-VL: ``QWEN2_5_TOWER``)."""

    rotary: Any  # apply_rotary_pos_emb_vision of the tower's module
    order: Any  # (visual, grid_thw) -> (sum N,) index from the tower's merge-unit order to raster order
    merger_in: Any  # (visual, last_hidden_state (sum N * unit, Dv)) -> (sum N, merge^2 * Dv), tower order
    deepstack: Any = None  # (tower output) -> list of (sum N, D) raster-order features, or None


def _qwen2_5_order(visual, grid):
    from transformers.vision_utils import get_vision_window_index

    window_index, _ = get_vision_window_index(grid, spatial_merge_size=visual.spatial_merge_size,
                                              window_size=visual.window_size, patch_size=visual.patch_size)
    return torch.argsort(window_index)  # window order -> raster order, per merge unit


def _qwen2_5_merger_in(visual, last):
    return visual.merger.ln_q(last).view(-1, visual.spatial_merge_unit * last.shape[-1])


def _qwen2_5_rotary(q, k, cos, sin):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    return apply_rotary_pos_emb_vision(q, k, cos, sin)


QWEN2_5_TOWER = TowerSpec(rotary=_qwen2_5_rotary, order=_qwen2_5_order, merger_in=_qwen2_5_merger_in)


def run_vision(visual: nn.Module, images: QwenImages, want_stats: bool,
               spec: TowerSpec = QWEN2_5_TOWER) -> list[ImageTokens]:
    """transformers' Qwen vision tower on I images -> one ImageTokens per image (raster order).

    With ``want_stats`` a forward pre-hook on the last block's attention (removed on return) reads
    its input and recomputes that block's attention probabilities: the importance signal for
    VisPruner / HoloV / VisionZip (no CLS token; as HoloV's Qwen2.5-VL code: the head-mean attention
    each patch receives in the last block, averaged over the merge unit)."""
    grid = images.grid_thw
    unit = visual.spatial_merge_unit
    if bool((grid[:, 0] != 1).any()):
        raise ValueError(f"image_grid_thw {grid.tolist()}: images have t=1 (videos are not supported)")
    seen: dict = {}

    def hook(module, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        seen["cu"], seen["pos"] = kwargs["cu_seqlens"], kwargs["position_embeddings"]

    handle = visual.blocks[-1].attn.register_forward_pre_hook(hook, with_kwargs=True) if want_stats else None
    try:
        out = visual(images.pixel_values.to(visual.patch_embed.proj.weight.dtype), grid_thw=grid)
    finally:
        if handle is not None:
            handle.remove()
    merged = out.pooler_output  # (sum N_i, D), raster order
    counts = (grid.prod(-1) // unit).tolist()
    deep = None if spec.deepstack is None else [f.split(counts) for f in spec.deepstack(out)]
    stats = None
    if want_stats:
        reverse = spec.order(visual, grid)
        received, keys = _last_block_stats(visual.blocks[-1].attn, seen["hidden"], seen["cu"], seen["pos"], spec.rotary)
        importance = received.view(-1, unit).mean(-1)[reverse]  # (sum N_i,)
        keys = keys.view(-1, unit, keys.shape[-1]).mean(1)[reverse]
        merger_in = spec.merger_in(visual, out.last_hidden_state)[reverse]
        stats = (importance.split(counts), merger_in.split(counts), keys.split(counts))
    toks = []
    for i, feats in enumerate(merged.split(counts)):
        hw = (int(grid[i, 1]) // visual.spatial_merge_size, int(grid[i, 2]) // visual.spatial_merge_size)
        extra = {} if stats is None else dict(importance=stats[0][i], merger_in=stats[1][i], keys=stats[2][i])
        toks.append(ImageTokens(feats=feats, grid_hw=hw, deepstack=None if deep is None else [d[i] for d in deep],
                                **extra))
    return toks


# -------------------------------------------------------------------------------------- model
@dataclass
class QwenPrepared:
    embeds: torch.Tensor  # (B, L, D)
    valid: torch.Tensor  # (B, L) bool
    positions: torch.Tensor  # (B, L, 3) float (t, h, w)
    visual: torch.Tensor  # (B, L) bool
    log_size: torch.Tensor  # (B, L)
    log_size_l0: torch.Tensor  # (B, L)
    labels: torch.Tensor | None
    next_pos: torch.Tensor  # (B,) position of the first generated token (all three axes)
    reductions: list[ReductionResult]
    inject: list[torch.Tensor] | None = None  # Qwen3-VL DeepStack: per level (B, L, D), 0 off visual tokens


@dataclass
class QwenOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    cache: KVCache | None = None
    prepared: QwenPrepared | None = None


class ImageBudgetError(ValueError):
    """--n-vis larger than some image's N (the message names the image); a user error in the CLIs."""


def image_budget(cfg: ReductionConfig | None, N: int, where: str) -> int:
    """n for one image of N merged tokens: --n-vis (absolute), --keep-ratio r (floor(r N), >= 1) or N."""
    if cfg is None:
        return N
    if cfg.n_vis is not None and cfg.n_vis > N:
        raise ImageBudgetError(f"--n-vis {cfg.n_vis} is larger than {where}'s N={N} merged visual tokens; "
                         f"pass a smaller --n-vis or a fraction with --keep-ratio")
    return cfg.budget(N)


def _reduction_inputs(tok: ImageTokens, cfg: ReductionConfig, projector) -> dict:
    from llava_restore.reduction import needed_inputs

    need = set(needed_inputs(cfg))
    if "vis_cls" in need:
        raise ValueError("Qwen2.5-VL's vision tower has no CLS token: run VisionZip with "
                         "--reduction-opts visionzip_cls=false")
    out = dict(grid_hw=tok.grid_hw)
    if "cls_attn" in need:
        out["cls_attn"] = tok.importance[None]
    if "vis_feats" in need:
        out["vis_feats"] = tok.merger_in[None]
    if "attn_keys" in need:
        out["attn_keys"] = tok.keys[None]
    if "projector" in need:
        out["projector"] = projector
    return out


def member_mean(result: ReductionResult, feats: torch.Tensor) -> torch.Tensor:
    """(N, D) per-patch features -> (n, D): each output token's mean over its members (a kept token: itself)."""
    src = result.source[0]  # (N,)
    kept = src >= 0
    sums = feats.new_zeros(result.n, feats.shape[-1], dtype=torch.float32).index_add_(0, src[kept], feats[kept].float())
    return (sums / result.sizes[0, :, None].float()).to(feats.dtype)


class Qwen2_5_VLForRestore(nn.Module):
    tower = QWEN2_5_TOWER  # how the transformers vision tower is read
    layer_cls = QwenDecoderLayer

    def __init__(self, config: QwenVLConfig, visual: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.model = QwenDecoder(config.text, config.mrope_section, config.mrope_interleaved, self.layer_cls)
        self.visual = visual
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.text.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.attn_backend = "sdpa"

    # ------------------------------------------------------------------ vision + reduction
    def encode(self, images: QwenImages, cfg: ReductionConfig | None) -> list[ImageTokens]:
        from llava_restore.reduction import needed_inputs

        if self.visual is None:
            raise RuntimeError("this model has no vision tower loaded")
        want = cfg is not None and cfg.method != "none" and bool(needed_inputs(cfg))
        return run_vision(self.visual, images, want_stats=want, spec=self.tower)

    def reduce(self, toks: list[ImageTokens], cfg: ReductionConfig | None, where: list[str]) -> list[ReductionResult]:
        """One single-sample ReductionResult per image; n from ``image_budget``."""
        from llava_restore.reduction import known_reducers, reduce_visual_tokens
        from llava_restore.reduction.inllm import is_in_llm
        from llava_restore.reduction.positions import identity_result

        if cfg is not None and is_in_llm(cfg.method):
            raise ValueError(f"reduction method {cfg.method!r} drops tokens inside the LLM, which the Qwen2.5-VL "
                             f"decoder does not run; on Qwen2.5-VL use a pre-LLM method: {known_reducers()}")
        out = []
        for tok, name in zip(toks, where):
            N = tok.feats.shape[0]
            n = image_budget(cfg, N, name)
            feats = tok.feats[None]  # (1, N, D)
            if cfg is None or cfg.method == "none":
                if n != N:
                    raise ValueError(f"reduction method 'none' keeps all {N} tokens of {name} but n_vis={n}")
                out.append(identity_result(feats))
                continue
            cfg_i = replace(cfg, n_vis=n, keep_ratio=None)
            out.append(reduce_visual_tokens(feats, cfg_i, **_reduction_inputs(tok, cfg_i, self.projector())))
        return out

    def projector(self):
        """The merger's MLP: VisionZip's reference merge sums members before it, as LLaVA's projector."""
        return self.visual.merger.mlp

    @staticmethod
    def _resolve(cfg: ReductionConfig | None) -> ReductionConfig | None:
        """Resolved, with position_mode retain whatever was asked: under M-RoPE every visual token keeps
        its 3-D ids (a 1-D renumbering would drop the grid the ids encode), as transformers' own ids
        and HoloV's Qwen2.5-VL code do; the tokens are then ordered by position (raster order)."""
        if cfg is None:
            return None
        return replace(cfg.resolve(), position_mode="retain")

    # ------------------------------------------------------------------ preparation
    def _image_spans(self, ids: torch.Tensor) -> list[tuple[int, int]]:
        """Maximal runs of image placeholders in one sample's ids (L,) -> [(start, stop)]."""
        is_img = (ids == self.config.image_token_id) | (ids == IMAGE_TOKEN_INDEX)
        if not bool(is_img.any()):
            return []
        edges = torch.diff(is_img.int(), prepend=is_img.new_zeros(1).int(), append=is_img.new_zeros(1).int())
        starts = (edges == 1).nonzero(as_tuple=True)[0].tolist()
        stops = (edges == -1).nonzero(as_tuple=True)[0].tolist()
        return list(zip(starts, stops))

    def prepare_multimodal(self, input_ids, attention_mask=None, images: QwenImages | None = None, labels=None,
                           reduction: ReductionConfig | None = None, padding_side: str = "right",
                           text_tail: int = 0, image_names: list[str] | None = None) -> QwenPrepared:
        """``text_tail``: the last that many tokens of every row are text whatever their ids (generated
        tokens, which may be an image placeholder id, when decoding by recomputation).
        ``image_names``: how errors name the images (e.g. their files), in batch order."""
        B, L = input_ids.shape
        dev = input_ids.device
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        spans = [self._image_spans(input_ids[b][mask[b]][:int(mask[b].sum()) - text_tail]) for b in range(B)]
        n_images = 0 if images is None else len(images)
        if sum(len(s) for s in spans) != n_images:
            raise ValueError(f"found {sum(len(s) for s in spans)} image placeholder runs in input_ids "
                             f"(per sample {[len(s) for s in spans]}) but {n_images} images were given")
        where = [f"image {i} (sample {b}, image {j} of it)" for i, (b, j) in
                 enumerate((b, j) for b in range(B) for j in range(len(spans[b])))]
        if image_names is not None:
            where = [f"image {name}" for name in image_names]
        toks = self.encode(images, reduction) if n_images else []
        reds = self.reduce(toks, reduction, where) if n_images else []
        rep = reduction.position_rep if reduction is not None else "median"
        text_emb = self.model.embed_tokens(input_ids.clamp(min=0))  # (B, L, D)

        rows, img_i = [], 0
        for b in range(B):
            ids_b, emb_b = input_ids[b][mask[b]], text_emb[b][mask[b]]
            lab_b = labels[b][mask[b]] if labels is not None else None
            seg_e, seg_p, seg_v, seg_s, seg_s0, seg_l = [], [], [], [], [], []
            row_images = []  # (image index, offset in the spliced row) for the DeepStack features
            cursor, start = 0.0, 0
            for lo, hi in spans[b] + [(ids_b.shape[0], ids_b.shape[0])]:
                t = lo - start  # text run [start, lo)
                seg_e.append(emb_b[start:lo])
                seg_p.append((torch.arange(t, device=dev, dtype=torch.float32) + cursor)[:, None].expand(t, 3))
                seg_v.append(torch.zeros(t, dtype=torch.bool, device=dev))
                seg_s.append(torch.zeros(t, device=dev))
                seg_s0.append(torch.zeros(t, device=dev))
                seg_l.append(lab_b[start:lo] if lab_b is not None else None)
                cursor += t
                if lo == ids_b.shape[0]:
                    break
                tok, r = toks[img_i], reds[img_i]
                N, n = tok.feats.shape[0], r.n
                if hi - lo not in (1, N):
                    raise ValueError(f"{where[img_i]}: {hi - lo} placeholder tokens, expected 1 or its N={N} "
                                     f"(grid {tok.grid_hw[0]}x{tok.grid_hw[1]} merged tokens)")
                row_images.append((img_i, sum(e.shape[0] for e in seg_e)))
                img_i += 1
                pos, cursor = visual_mrope_ids(r, tok.grid_hw, cursor, rep)
                seg_e.append(r.features[0].to(emb_b.dtype))
                seg_p.append(pos)
                seg_v.append(torch.ones(n, dtype=torch.bool, device=dev))
                seg_s.append(torch.log(r.sizes[0].float()))
                seg_s0.append(torch.full((n,), math.log(N / n), device=dev))
                seg_l.append(torch.full((n,), IGNORE_INDEX, dtype=torch.long, device=dev) if lab_b is not None else None)
                start = hi
            rows.append((torch.cat(seg_e), torch.cat(seg_p), torch.cat(seg_v), torch.cat(seg_s), torch.cat(seg_s0),
                         torch.cat(seg_l) if lab_b is not None else None, cursor, row_images))

        Lmax = max(r[0].shape[0] for r in rows)
        D = text_emb.shape[-1]
        embeds = text_emb.new_zeros(B, Lmax, D)
        valid = torch.zeros(B, Lmax, dtype=torch.bool, device=dev)
        positions = torch.zeros(B, Lmax, 3, device=dev)
        visual = torch.zeros(B, Lmax, dtype=torch.bool, device=dev)
        log_size = torch.zeros(B, Lmax, device=dev)
        log_size_l0 = torch.zeros(B, Lmax, device=dev)
        out_labels = torch.full((B, Lmax), IGNORE_INDEX, dtype=torch.long, device=dev) if labels is not None else None
        next_pos = torch.zeros(B, device=dev)
        levels = len(toks[0].deepstack) if toks and toks[0].deepstack is not None else 0
        inject = [text_emb.new_zeros(B, Lmax, D) for _ in range(levels)] or None
        for b, (e, p, v, s, s0, lab, cur, row_images) in enumerate(rows):
            ln = e.shape[0]
            start = Lmax - ln if padding_side == "left" else 0
            sl = slice(start, start + ln)
            embeds[b, sl], valid[b, sl], positions[b, sl], visual[b, sl] = e, True, p, v
            log_size[b, sl], log_size_l0[b, sl] = s, s0
            if out_labels is not None:
                out_labels[b, sl] = lab
            next_pos[b] = cur
            for i, off in row_images:  # DeepStack: each level reduced like the image's tokens
                n = reds[i].n
                for level, feats in zip(inject or [], toks[i].deepstack or []):
                    level[b, start + off:start + off + n] = member_mean(reds[i], feats).to(level.dtype)
        return QwenPrepared(embeds, valid, positions, visual, log_size, log_size_l0, out_labels, next_pos, reds, inject)

    # ------------------------------------------------------------------ context
    def _context(self, cfg: ReductionConfig | None, q_pos, cache: KVCache, decoding: bool, backend) -> AttnContext:
        t = self.config.text
        size_on = cfg is not None and bool(cfg.size_term)
        dist_on = cfg is not None and bool(cfg.distance_term) and (not decoding or cfg.distance_in_decode)
        return AttnContext(
            key_valid=cache.key_valid, query_pos=q_pos, key_pos=cache.key_pos,
            backend=backend or (cfg.attn_backend if cfg is not None else self.attn_backend),
            key_log_size=cache.key_log_size if size_on else None,
            key_log_size_l0=cache.key_log_size_l0 if size_on and cfg.layer0_uniform_size else None,
            distance=dist_on,
            distance_keys=cache.key_visual if dist_on and cfg.distance_scope == "visual_keys" else None,
            c=cfg.distance_c if cfg is not None else 2.0, rope_theta=t.rope_theta, head_dim=t.head_dim,
            mrope_section=self.config.mrope_section, mrope_interleaved=self.config.mrope_interleaved)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids, attention_mask=None, images: QwenImages | None = None, labels=None,
                reduction: ReductionConfig | None = None, cache: KVCache | None = None, use_cache: bool = False,
                padding_side: str = "right", attn_backend: str | None = None,
                last_logits_only: bool = False, text_tail: int = 0,
                image_names: list[str] | None = None) -> QwenOutput:
        """Prefill (``cache`` None or empty) or one decode step of new text tokens (B, T).
        ``text_tail``: see ``prepare_multimodal``."""
        if last_logits_only and labels is not None:
            raise ValueError("last_logits_only=True cannot compute a loss over labels")
        reduction = self._resolve(reduction)
        if cache is not None and cache.length > 0:
            return self._decode(input_ids, reduction, cache, attn_backend)
        prep = self.prepare_multimodal(input_ids, attention_mask, images, labels, reduction, padding_side, text_tail,
                                       image_names)
        cache = KVCache() if (use_cache or cache is not None) else None
        meta = cache if cache is not None else KVCache()
        meta.set_key_meta(prep)
        ctx = self._context(reduction, prep.positions, meta, decoding=False, backend=attn_backend)
        h = self.model(prep.embeds, prep.positions, ctx, cache, inject=prep.inject)
        logits = self.lm_head(h[:, -1:] if last_logits_only else h)
        loss = None
        if prep.labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), prep.labels[:, 1:].flatten(),
                                   ignore_index=IGNORE_INDEX)
        return QwenOutput(logits=logits, loss=loss, cache=cache, prepared=prep)

    def _decode(self, input_ids, cfg, cache: KVCache, backend) -> QwenOutput:
        B, T = input_ids.shape
        dev = input_ids.device
        q1 = cache.next_pos[:, None] + torch.arange(T, device=dev, dtype=torch.float32)[None]  # (B, T)
        q_pos = q1[:, :, None].expand(B, T, 3)  # text: the same id on all three axes
        cache.append_text(q_pos)
        ctx = self._context(cfg, q_pos, cache, decoding=True, backend=backend)
        h = self.model(self.model.embed_tokens(input_ids), q_pos, ctx, cache)
        return QwenOutput(logits=self.lm_head(h), cache=cache)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, images: QwenImages | None = None,
                 reduction: ReductionConfig | None = None, max_new_tokens: int = 128, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float | None = None, num_beams: int = 1,
                 eos_token_id: int | None = None, pad_token_id: int | None = None, use_cache: bool = True,
                 attn_backend: str | None = None, generator: torch.Generator | None = None,
                 return_prepared: bool = False, vision_cache=None, image_names: list[str] | None = None):
        """Greedy (or sampled) decoding of a left-padded batch -> new tokens (B, T), padded after EOS."""
        if vision_cache is not None:
            raise ValueError("--vision-cache is not supported for Qwen2.5-VL checkpoints")
        if num_beams != 1:
            raise ValueError(f"num_beams={num_beams} is not supported")
        eos = self.config.text.eos_token_id if eos_token_id is None else eos_token_id
        pad = (pad_token_id if pad_token_id is not None else eos) or 0
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        out = self(input_ids, mask, images, reduction=reduction, use_cache=use_cache, padding_side="left",
                   attn_backend=attn_backend, last_logits_only=True, image_names=image_names)
        prepared = out.prepared
        tokens = decode(
            out, input_ids, mask, max_new_tokens, eos, pad, use_cache,
            step_cached=lambda nxt, cache: self(nxt, reduction=reduction, cache=cache, attn_backend=attn_backend),
            step_full=lambda ids, m, step: self(ids, m, images, reduction=reduction, padding_side="left",
                                                attn_backend=attn_backend, last_logits_only=True,
                                                text_tail=step + 1),
            do_sample=do_sample, temperature=temperature, top_p=top_p, generator=generator)
        return (tokens, prepared) if return_prepared else tokens


# -------------------------------------------------------------------------------------- loading
def hf_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5's in-memory layout (``model.language_model.*``, ``model.visual.*``) -> the hub layout."""
    out = {}
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        elif k.startswith("model.visual."):
            k = "visual." + k[len("model.visual."):]
        out[k] = v
    return out


def load_into(model_cls, visual: nn.Module, cfg: QwenVLConfig, folder: str, sd: dict[str, torch.Tensor],
              dtype: torch.dtype):
    """``model_cls(cfg)`` (decoder built on meta) with the hub-layout ``sd`` loaded strictly, the
    transformers ``visual`` tower included."""
    vis_sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    lm_sd = {k: v for k, v in sd.items() if not k.startswith("visual.")}
    missing, unexpected = visual.load_state_dict(vis_sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{folder}: vision tower weights mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.device("meta"):
        model = model_cls(cfg)
    assign_decoder_weights(model, lm_sd, dtype, folder, cfg.text.tie_word_embeddings)
    model.visual = visual.to(dtype)
    return model


def build_qwen_model(cfg: QwenVLConfig, folder: str, sd: dict[str, torch.Tensor], dtype: torch.dtype):
    """Our decoder + transformers' Qwen2.5-VL vision tower, weights loaded strictly; returns the model."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    vcfg = Qwen2_5_VLVisionConfig(**{k: v for k, v in cfg.vision_config.items() if k not in ("model_type",)})
    visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(vcfg)
    return load_into(Qwen2_5_VLForRestore, visual, cfg, folder, hf_to_ours(sd), dtype)


# ------------------------------------------------------------------------------------ evaluation
CHAT_TEMPLATE = "chat_template"  # --conv-mode: the tokenizer's own chat template (Qwen2.5-VL)


def chat_prompt_ids(question: str, tokenizer, conv_mode: str = CHAT_TEMPLATE) -> torch.Tensor:
    """A LLaVA-style user turn ("<image>\\n..." marks each image) as Qwen chat-template ids (L,):
    each "<image>" becomes an image entry (<|vision_start|><|image_pad|><|vision_end|>, one placeholder
    the model expands to the image's N tokens), the newline LLaVA puts after it is dropped."""
    from llava_restore.constants import DEFAULT_IMAGE_TOKEN

    if conv_mode != CHAT_TEMPLATE:
        raise ValueError(f"a Qwen2.5-VL checkpoint takes --conv-mode {CHAT_TEMPLATE} (its tokenizer's chat "
                         f"template), not the LLaVA template {conv_mode!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise CheckpointError("the checkpoint's tokenizer has no chat_template (tokenizer_config.json / "
                              "chat_template.jinja)")
    content = []
    for i, part in enumerate(question.split(DEFAULT_IMAGE_TOKEN)):
        if i > 0:
            content.append({"type": "image"})
            part = part[1:] if part.startswith("\n") else part
        if part:
            content.append({"type": "text", "text": part})
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


def process_qwen_images(imgs, processor, device=None, dtype=None) -> QwenImages:
    """PIL images -> QwenImages with the processor's dynamic resolution (min_pixels / max_pixels)."""
    out = processor(images=list(imgs), return_tensors="pt")
    return QwenImages(out["pixel_values"].to(device=device, dtype=dtype), out["image_grid_thw"].to(device))


def default_conv_mode(model_path: str | None) -> str:
    """The eval CLIs' --conv-mode when none is given: ``chat_template`` for a local Qwen2.5-VL or Qwen3-VL
    folder (recognised by its config fields), else LLaVA-1.5's ``vicuna_v1``."""
    import json
    import os

    conf = os.path.join(os.path.expanduser(model_path or ""), "config.json")
    if os.path.isfile(conf):
        with open(conf) as f:
            if json.load(f).get("model_type") in QWEN_MODEL_TYPES:
                return CHAT_TEMPLATE
    return "vicuna_v1"
