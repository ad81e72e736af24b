"""LlavaLlamaForCausalLM (model_type ``llava_llama``): CLIP tower -> projector -> [reduction] -> LLaMA.

Multimodal inputs are prepared per sample from ``input_ids`` (the image span is found, never
assumed), so any batch size, mixed prompt lengths and left or right padding work.  The optional
visual-token reduction and RESTORE's calibration are configured per call by a ``ReductionConfig``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llava_restore.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_restore.reduction.config import ReductionConfig
from llava_restore.reduction.inllm import DecodeStages, InLLMReport, build_state, is_in_llm
from llava_restore.reduction.types import ReductionResult

from .attention import AttnContext
from .config import LlavaConfig
from .decoding import decode
from .llama import KVCache, LlamaDecoder
from .vision import CLIPVisionTower, VisionCache, VisionOutput, build_projector


class LlavaLlamaModel(LlamaDecoder):
    """The ``model.`` module: LLaMA decoder + ``mm_projector`` + ``vision_tower``."""

    def __init__(self, config: LlavaConfig, vision_tower: CLIPVisionTower | None):
        super().__init__(config.text)
        self.mm_projector = build_projector(config.mm_projector_type, config.mm_hidden_size, config.text.hidden_size)
        self.vision_tower = vision_tower


@dataclass
class Prepared:
    """A prefill batch after splicing visual tokens in (all (B, L) unless noted)."""

    embeds: torch.Tensor  # (B, L, D)
    valid: torch.Tensor  # bool, False on padding
    positions: torch.Tensor  # float RoPE positions
    visual: torch.Tensor  # bool, True on visual tokens
    log_size: torch.Tensor  # log s_j (0 off visual tokens)
    log_size_l0: torch.Tensor  # layer-0 uniform variant log(N/n) on visual tokens
    labels: torch.Tensor | None
    next_pos: torch.Tensor  # (B,) position of the first generated token
    reductions: list[ReductionResult]  # one per image, in batch order
    inllm: InLLMReport | None = None  # in-LLM reduction (fastv, pdrop): visual tokens per layer, set by forward


@dataclass
class LlavaOutput:
    logits: torch.Tensor  # (B, L, V)
    loss: torch.Tensor | None = None
    cache: KVCache | None = None
    prepared: Prepared | None = None


def identity_reduction(feats: torch.Tensor) -> ReductionResult:
    B, N, _ = feats.shape
    idx = torch.arange(N, device=feats.device).expand(B, N)
    return ReductionResult(features=feats, source=idx.clone(), sizes=torch.ones(B, N, device=feats.device),
                           positions=idx.float())


class LlavaLlamaForCausalLM(nn.Module):
    def __init__(self, config: LlavaConfig, vision_tower: CLIPVisionTower | None = None):
        super().__init__()
        self.config = config
        self.model = LlavaLlamaModel(config, vision_tower)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        if config.text.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.attn_backend = "sdpa"  # default backend when no ReductionConfig names one

    # ------------------------------------------------------------------ vision
    def get_vision_tower(self) -> CLIPVisionTower:
        if self.model.vision_tower is None:
            raise RuntimeError("this model has no vision tower loaded")
        return self.model.vision_tower

    def project(self, vis: torch.Tensor) -> torch.Tensor:
        """mm_projector on pre-projector features (B, m, Dv) -> (B, m, D), in the projector's dtype."""
        proj_dtype = self.model.mm_projector.parameters().__next__().dtype
        return self.model.mm_projector(vis.to(proj_dtype))

    def run_tower(self, images: torch.Tensor, want_cls_attn: bool = False, want_keys: bool = False,
                  vision_cache: VisionCache | None = None) -> VisionOutput:
        """The vision tower on (B, 3, H, W), through ``vision_cache`` when one is given."""
        tower = self.get_vision_tower()
        if vision_cache is None:
            return tower(images, want_cls_attn=want_cls_attn, want_keys=want_keys)
        return vision_cache(tower, images, want_cls_attn=want_cls_attn, want_keys=want_keys)

    def encode_images(self, images: torch.Tensor, want_cls_attn: bool = False, vision_cache: VisionCache | None = None):
        """(B, 3, H, W) -> vision feats (B, N, Dv), projected (B, N, D), cls_attn (B, N) | None."""
        out = self.run_tower(images, want_cls_attn=want_cls_attn, vision_cache=vision_cache)
        return out.features, self.project(out.features), out.cls_attn

    def encode_for_reduction(self, images: torch.Tensor, cfg: ReductionConfig,
                             vision_cache: VisionCache | None = None) -> tuple[torch.Tensor, dict]:
        """(B, 3, H, W) -> (projected (B, N, D), the keyword inputs of ``reduce_visual_tokens`` that
        ``cfg`` uses: vis_feats, cls_attn, grid_hw, projector and, for plain VisionZip, vis_cls and
        attn_keys), from one tower pass."""
        from llava_restore.reduction import needed_inputs

        tower = self.get_vision_tower()
        if {"vis_cls", "attn_keys"} & set(needed_inputs(cfg)):
            out = self.run_tower(images, want_cls_attn=True, want_keys=True, vision_cache=vision_cache)
            vis, cls_attn, proj = out.features, out.cls_attn, self.project(out.features)
            extras = dict(vis_cls=out.cls_feature, attn_keys=out.attn_keys)
        else:  # through encode_images, which callers may replace (cached features)
            vis, proj, cls_attn = self.encode_images(images, want_cls_attn=True, vision_cache=vision_cache)
            extras = {}
        return proj, dict(vis_feats=vis, cls_attn=cls_attn, grid_hw=tower.grid_hw, projector=self.project, **extras)

    def reduce(self, images: torch.Tensor, cfg: ReductionConfig | None,
               keep: Sequence[torch.Tensor] | None = None,
               vision_cache: VisionCache | None = None) -> list[ReductionResult]:
        """Encode and reduce every image; returns one single-sample result per image.

        ``keep`` (instead of ``cfg``): per image, the increasing patch indices to keep as they are
        (pure pruning at the original positions; e.g. a training curriculum or an oracle ablation)."""
        if keep is not None:
            if cfg is not None and cfg.method != "none":
                raise ValueError(f"visual_keep and reduction method {cfg.method!r} are exclusive")
            return self._keep(images, keep)
        if cfg is not None and is_in_llm(cfg.method):  # all N tokens enter the LLM; the decoder drops them
            _, proj, _ = self.encode_images(images, vision_cache=vision_cache)
            return identity_reduction(proj).split()
        if cfg is None or cfg.method == "none":
            _, proj, _ = self.encode_images(images, vision_cache=vision_cache)
            if cfg is not None and cfg.n_vis not in (None, proj.shape[1]):
                raise ValueError(f"reduction method 'none' keeps all {proj.shape[1]} tokens but n_vis={cfg.n_vis}")
            return identity_reduction(proj).split()
        from llava_restore.reduction import reduce_visual_tokens

        proj, inputs = self.encode_for_reduction(images, cfg, vision_cache=vision_cache)
        return reduce_visual_tokens(proj, cfg, **inputs).split()

    def _keep(self, images: torch.Tensor, keep: Sequence[torch.Tensor]) -> list[ReductionResult]:
        _, proj, _ = self.encode_images(images)  # (B, N, D)
        B, N = proj.shape[:2]
        if len(keep) != B:
            raise ValueError(f"visual_keep has {len(keep)} index lists for {B} images")
        out = []
        for i, idx in enumerate(keep):
            idx = torch.as_tensor(idx, device=proj.device).long().flatten()  # (n,)
            n = idx.numel()
            if n == 0 or int(idx.min()) < 0 or int(idx.max()) >= N or (n > 1 and not bool((idx[1:] > idx[:-1]).all())):
                raise ValueError(f"visual_keep[{i}] must be 1..{N} increasing patch indices in [0, {N}), got "
                                 f"{idx.tolist()[:8]}{'...' if n > 8 else ''} ({n} indices)")
            src = torch.full((N,), -1, dtype=torch.long, device=proj.device)
            src[idx] = torch.arange(n, device=proj.device)
            out.append(ReductionResult(proj[i:i + 1, idx], src[None], torch.ones(1, n, device=proj.device),
                                       idx[None].float()))
        return out

    # ------------------------------------------------------------- preparation
    def prepare_multimodal(self, input_ids, attention_mask=None, images=None, labels=None,
                           reduction: ReductionConfig | None = None, padding_side: str = "right",
                           visual_keep: Sequence[torch.Tensor] | None = None,
                           vision_cache: VisionCache | None = None) -> Prepared:
        """Splice (reduced) visual tokens into each sample at its ``IMAGE_TOKEN_INDEX`` placeholders.
        ``visual_keep``: see ``reduce``; the kept tokens keep their original positions."""
        B, L = input_ids.shape
        dev = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        attention_mask = attention_mask.bool()
        is_img = (input_ids == IMAGE_TOKEN_INDEX) & attention_mask
        n_placeholders = int(is_img.sum())
        n_images = 0 if images is None else images.shape[0]
        if n_placeholders != n_images:
            per = is_img.sum(1).tolist()
            raise ValueError(f"found {n_placeholders} image placeholders in input_ids (per sample {per}) "
                             f"but {n_images} images were given")
        retain = visual_keep is not None or (reduction is not None and reduction.position_mode == "retain")
        reds = self.reduce(images, reduction, keep=visual_keep, vision_cache=vision_cache) if n_images else []
        text_emb = self.model.embed_tokens(input_ids.masked_fill(input_ids < 0, 0))  # (B, L, D)

        rows, img_i = [], 0
        for b in range(B):
            keep = attention_mask[b]
            ids_b, emb_b = input_ids[b][keep], text_emb[b][keep]
            lab_b = labels[b][keep] if labels is not None else None
            segs_e, segs_p, segs_v, segs_s, segs_s0, segs_l = [], [], [], [], [], []
            cursor, start = 0, 0
            img_pos = (ids_b == IMAGE_TOKEN_INDEX).nonzero(as_tuple=True)[0].tolist()
            for stop in img_pos + [ids_b.shape[0]]:
                t = stop - start  # text run [start, stop)
                segs_e.append(emb_b[start:stop])
                segs_p.append(torch.arange(t, device=dev, dtype=torch.float32) + cursor)
                segs_v.append(torch.zeros(t, dtype=torch.bool, device=dev))
                segs_s.append(torch.zeros(t, device=dev))
                segs_s0.append(torch.zeros(t, device=dev))
                segs_l.append(lab_b[start:stop] if lab_b is not None else None)
                cursor += t
                if stop == ids_b.shape[0]:
                    break
                r = reds[img_i]
                img_i += 1
                N, n = r.source.shape[1], r.n
                segs_e.append(r.features[0].to(emb_b.dtype))
                pos = (r.positions[0].float() + cursor) if retain else (torch.arange(n, device=dev, dtype=torch.float32) + cursor)
                segs_p.append(pos)
                segs_v.append(torch.ones(n, dtype=torch.bool, device=dev))
                segs_s.append(torch.log(r.sizes[0].float()))
                segs_s0.append(torch.full((n,), math.log(N / n), device=dev))
                segs_l.append(torch.full((n,), IGNORE_INDEX, dtype=torch.long, device=dev) if lab_b is not None else None)
                cursor += N if retain else n
                start = stop + 1
            rows.append((torch.cat(segs_e), torch.cat(segs_p), torch.cat(segs_v), torch.cat(segs_s), torch.cat(segs_s0),
                         torch.cat(segs_l) if lab_b is not None else None, cursor))

        Lmax = max(r[0].shape[0] for r in rows)
        D = text_emb.shape[-1]
        embeds = text_emb.new_zeros(B, Lmax, D)
        valid = torch.zeros(B, Lmax, dtype=torch.bool, device=dev)
        positions = torch.zeros(B, Lmax, device=dev)
        visual = torch.zeros(B, Lmax, dtype=torch.bool, device=dev)
        log_size = torch.zeros(B, Lmax, device=dev)
        log_size_l0 = torch.zeros(B, Lmax, device=dev)
        out_labels = torch.full((B, Lmax), IGNORE_INDEX, dtype=torch.long, device=dev) if labels is not None else None
        next_pos = torch.zeros(B, device=dev)
        for b, (e, p, v, s, s0, lab, cur) in enumerate(rows):
            ln = e.shape[0]
            sl = slice(Lmax - ln, Lmax) if padding_side == "left" else slice(0, ln)
            embeds[b, sl], valid[b, sl], positions[b, sl], visual[b, sl] = e, True, p, v
            log_size[b, sl], log_size_l0[b, sl] = s, s0
            if out_labels is not None:
                out_labels[b, sl] = lab
            next_pos[b] = cur
        return Prepared(embeds, valid, positions, visual, log_size, log_size_l0, out_labels, next_pos, reds)

    # ------------------------------------------------------------------ context
    def _context(self, cfg: ReductionConfig | None, q_pos, cache: KVCache, decoding: bool, backend: str | None) -> AttnContext:
        t = self.config.text
        size_on = cfg is not None and bool(cfg.size_term)
        dist_on = cfg is not None and bool(cfg.distance_term) and (not decoding or cfg.distance_in_decode)
        return AttnContext(
            key_valid=cache.key_valid,
            query_pos=q_pos,
            key_pos=cache.key_pos,
            backend=backend or (cfg.attn_backend if cfg is not None else self.attn_backend),
            key_log_size=cache.key_log_size if size_on else None,
            key_log_size_l0=cache.key_log_size_l0 if size_on and cfg.layer0_uniform_size else None,
            distance=dist_on,
            distance_keys=cache.key_visual if dist_on and cfg.distance_scope == "visual_keys" else None,
            c=cfg.distance_c if cfg is not None else 2.0,
            rope_theta=t.rope_theta,
            head_dim=t.head_dim,
        )

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, attention_mask=None, images=None, labels=None,
                reduction: ReductionConfig | None = None, cache: KVCache | None = None, use_cache: bool = False,
                padding_side: str = "right", attn_backend: str | None = None, last_logits_only: bool = False,
                visual_keep: Sequence[torch.Tensor] | None = None, vision_cache: VisionCache | None = None) -> LlavaOutput:
        """Prefill (``cache`` None or empty) or one decode step of new text tokens (B, T).

        ``visual_keep``: per image, the patch indices to keep at their original positions (see ``reduce``).

        ``last_logits_only`` projects only the last position to the vocabulary (logits (B, 1, V)),
        which is all generation needs; it cannot be combined with ``labels``."""
        if last_logits_only and labels is not None:
            raise ValueError("last_logits_only=True cannot compute a loss over labels")
        if reduction is not None:
            reduction = reduction.resolve()
        if cache is not None and cache.length > 0:
            return self._decode(input_ids, reduction, cache, attn_backend)
        prep = self.prepare_multimodal(input_ids, attention_mask, images, labels, reduction, padding_side, visual_keep,
                                       vision_cache)
        cache = KVCache() if (use_cache or cache is not None) else None
        meta = cache if cache is not None else KVCache()
        meta.set_key_meta(prep)
        ctx = self._context(reduction, prep.positions, meta, decoding=False, backend=attn_backend)
        hooks = None
        if reduction is not None and is_in_llm(reduction.method):
            hooks = build_state(reduction, self.config.text.num_hidden_layers, self.get_vision_tower().num_patches,
                                prep.valid, prep.visual, prep.positions, prep.next_pos, padding_side, cache)
        h = self.model(prep.embeds, prep.positions, ctx, cache, hooks)  # (B, L, D)
        if hooks is not None:
            prep.inllm = hooks.report()
        logits = self.lm_head(h[:, -1:] if last_logits_only else h)
        loss = None
        if prep.labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), prep.labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        return LlavaOutput(logits=logits, loss=loss, cache=cache, prepared=prep)

    def _decode(self, input_ids, cfg, cache: KVCache, backend) -> LlavaOutput:
        B, T = input_ids.shape
        dev = input_ids.device
        q_pos = cache.next_pos[:, None] + torch.arange(T, device=dev, dtype=torch.float32)[None]  # (B, T)
        cache.append_text(q_pos)
        for stage in cache.stages:  # in-LLM reduction: the later layers' own key sets
            stage.append(q_pos)
        ctx = self._context(cfg, q_pos, cache, decoding=True, backend=backend)
        hooks = DecodeStages(cache.stages, q_pos) if cache.stages else None
        h = self.model(self.model.embed_tokens(input_ids), q_pos, ctx, cache, hooks)
        return LlavaOutput(logits=self.lm_head(h), cache=cache)

    # --------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, images=None, reduction: ReductionConfig | None = None,
                 max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0, top_p: float | None = None,
                 num_beams: int = 1, eos_token_id: int | None = None, pad_token_id: int | None = None,
                 use_cache: bool = True, attn_backend: str | None = None, generator: torch.Generator | None = None,
                 return_prepared: bool = False, vision_cache: VisionCache | None = None):
        """Greedy (or sampled) decoding of a left-padded batch -> new tokens (B, T), padded after EOS.
        ``vision_cache``: reuse the tower's outputs for images seen before (``VisionCache``)."""
        if num_beams != 1:
            raise ValueError(f"num_beams={num_beams} is not supported (LLaVA-1.5 evaluation uses num_beams=1)")
        eos = self.config.text.eos_token_id if eos_token_id is None else eos_token_id
        pad = (pad_token_id if pad_token_id is not None else eos) or 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        mask = attention_mask.bool()
        out = self(input_ids, mask, images, reduction=reduction, use_cache=use_cache, padding_side="left",
                   attn_backend=attn_backend, last_logits_only=True, vision_cache=vision_cache)
        prepared = out.prepared
        tokens = decode(
            out, input_ids, mask, max_new_tokens, eos, pad, use_cache,
            step_cached=lambda nxt, cache: self(nxt, reduction=reduction, cache=cache, attn_backend=attn_backend),
            step_full=lambda ids, m, step: self(ids, m, images, reduction=reduction, padding_side="left",
                                                attn_backend=attn_backend, last_logits_only=True,
                                                vision_cache=vision_cache),
            do_sample=do_sample, temperature=temperature, top_p=top_p, generator=generator)
        return (tokens, prepared) if return_prepared else tokens
