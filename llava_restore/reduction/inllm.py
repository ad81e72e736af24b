"""In-LLM visual-token reduction: visual tokens are dropped *inside* the decoder, at the layers a
method names, ranked by the attention of text queries to the visual keys at those layers
(FastV, PDrop; docs/restore.md, "In-LLM reduction").

All N visual tokens enter the LLM (the pre-LLM pipeline is the identity for these methods); the
decoder calls one per-forward state object (``InLLMState`` in prefill, ``DecodeStages`` in a
decode step) between its layers.  Nothing is patched and nothing is stored on modules.

API for further policies (e.g. SparseVLM), kept stable:

- ``InLLMPolicy``: subclass it and register it with ``@register_reducer(name)`` (``in_llm = True``
  marks it; ``is_in_llm(name)`` tells).  Two methods:
    ``schedule(cfg, n_layers, n_visual) -> Schedule``: the drops (``DropEvent``s) and the nominal
        visual tokens per image at every layer (``Schedule.counts``; ``n_vis`` is their mean);
        bad options raise ``ValueError`` naming the option (layer out of range, budget not met);
    ``decide(event, view, cfg) -> Decision``: at one drop, which tokens stay (and optionally new
        tokens to insert, e.g. SparseVLM's recycled merges).
- ``DropEvent(score_layer, drop_layer, keep)``: the ranking uses layer ``score_layer``'s q and k;
  the tokens are gone from layer ``drop_layer`` on.  ``score_layer == drop_layer - 1``: the layer's
  own attention of the forward just run (FastV, SparseVLM); ``score_layer == drop_layer``: that
  layer's q/k computed on the not yet reduced sequence (PDrop).  ``keep``: visual tokens per image
  the policy is asked to keep (None: the policy decides, e.g. rank-adaptive).
- ``LayerView``: what ``decide`` sees, all in the current (padded) layout (B, L):
  ``h`` (B, L, D) hidden states entering ``drop_layer``, ``visual`` / ``valid`` (B, L) bool,
  ``positions`` (B, L) float, ``last`` (B,) index of each row's last real token, ``n_images`` (B,),
  ``probs(rows)``: softmax attention (B, H, n_q, L) of the query rows ``rows`` (B, n_q) at
  ``score_layer`` (fp32, causal and padding mask, GQA heads repeated), and ``text_after_image()``
  (B, L) bool.
- ``Decision(keep, extra_h=None, extra_pos=None, extra_valid=None)``: ``keep`` (B, L) bool over the
  current tokens (every real non-visual token must stay); ``extra_h`` (B, m, D) tokens to insert
  after each row's image span, with positions ``extra_pos`` (B, m) and ``extra_valid`` (B, m) bool
  (rows may insert fewer).  Rows may keep different numbers of tokens; the state re-pads.
- ``attention_probs(q, k, allowed)``: the explicit attention row, a pure function;
  ``topk_mask(scores, eligible, k)``, ``visual_scores(view, cfg)`` (head-mean attention of the
  ``cfg.inllm_query`` rows) and ``keep_top_visual(event, view, cfg)`` (FastV's/PDrop's rule) are
  building blocks.
- Names: ``registry.known_methods()`` lists every method, ``known_reducers()`` only the pre-LLM
  ones (what ``reduce_visual_tokens`` runs); ``check_config(cfg)`` refuses RESTORE's switches;
  ``build_state(cfg, n_layers, n_visual, valid, visual, positions, next_pos, padding_side, cache)``
  is what the model's forward calls (``schedule_summary`` what a run's stats record).

After a drop the positions are the kept tokens' own (``retain``, FastV) or 0, 1, ... over the
row's remaining tokens (``reindex``, PDrop), per ``cfg.inllm_positions`` or the policy's
``reference_positions``.  ``KVCache.stages`` holds each stage's key metadata so that decoding
attends to exactly the kept keys at every layer.  The forward's report (``InLLMReport``) gives
the per-layer visual counts per row and their mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from .common import gather_rows
from .config import ReductionConfig
from .registry import known_methods, register_reducer, registered_class


# ----------------------------------------------------------------------------- pure functions
def attention_probs(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """q (B, H, n_q, d), k (B, Hkv, L, d), allowed (B, n_q, L) bool -> softmax over keys
    (B, H, n_q, L) in float32 (scores q.k / sqrt(d), -inf where not allowed)."""
    n_rep = q.shape[1] // k.shape[1]
    k = k if n_rep == 1 else k.repeat_interleave(n_rep, dim=1)
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, n_q, L)
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    return torch.softmax(logits, dim=-1)


def last_index(valid: torch.Tensor) -> torch.Tensor:
    """valid (B, L) bool -> (B,) index of each row's last real token."""
    idx = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
    return torch.where(valid, idx, -1).max(1).values


def topk_mask(scores: torch.Tensor, eligible: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """scores (B, L), eligible (B, L) bool, k (B,) long -> (B, L) bool: the k[b] highest-scoring
    eligible tokens of each row (fewer if the row has fewer eligible)."""
    s = scores.float().masked_fill(~eligible, float("-inf"))
    order = s.argsort(dim=1, descending=True, stable=True)  # (B, L)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))
    return eligible & (rank < k[:, None])


def layer_average(counts: list[int]) -> float:
    return sum(counts) / len(counts)


# ----------------------------------------------------------------------------- policy interface
@dataclass
class DropEvent:
    score_layer: int
    drop_layer: int
    keep: Optional[int]  # visual tokens per image after this drop (None: the policy decides)
    stage: int = 0  # 1-based index of the drop


@dataclass
class Schedule:
    events: list[DropEvent]
    counts: list[int]  # nominal visual tokens per image at every layer (len = n_layers)
    n_visual: int  # N, per image, entering the LLM

    @property
    def average(self) -> float:
        return layer_average(self.counts)

    def summary(self) -> dict:
        return {"n_vis_layer_average": self.average, "visual_per_layer": list(self.counts), "n_visual": self.n_visual}


@dataclass
class Decision:
    keep: torch.Tensor  # (B, L) bool
    extra_h: Optional[torch.Tensor] = None  # (B, m, D)
    extra_pos: Optional[torch.Tensor] = None  # (B, m) float
    extra_valid: Optional[torch.Tensor] = None  # (B, m) bool


@dataclass
class LayerView:
    h: torch.Tensor  # (B, L, D)
    visual: torch.Tensor  # (B, L) bool
    valid: torch.Tensor  # (B, L) bool
    positions: torch.Tensor  # (B, L) float
    n_images: torch.Tensor  # (B,) long
    k: torch.Tensor  # (B, Hkv, L, d) keys of score_layer (RoPE applied)
    q_rows: Callable[[torch.Tensor], torch.Tensor]  # rows (B, n_q) -> q (B, H, n_q, d)
    n_q: int = 0  # query rows asked for so far (the efficiency report counts their cost)
    # the decoder's input layout (SparseVLM's raters come from the input embeddings): h0 (B, L0, D),
    # valid0 / visual0 (B, L0) bool, and orig (B, L): each current token's input index (-1: inserted)
    h0: Optional[torch.Tensor] = None
    valid0: Optional[torch.Tensor] = None
    visual0: Optional[torch.Tensor] = None
    orig: Optional[torch.Tensor] = None

    @property
    def last(self) -> torch.Tensor:
        return last_index(self.valid)

    def allowed(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (B, n_q) -> (B, n_q, L) bool: causal (key index <= query index) and real keys."""
        kj = torch.arange(self.valid.shape[1], device=rows.device)
        return (kj[None, None, :] <= rows[:, :, None]) & self.valid[:, None, :]

    def probs(self, rows: torch.Tensor) -> torch.Tensor:
        self.n_q += rows.shape[1]
        return attention_probs(self.q_rows(rows), self.k, self.allowed(rows))

    def text_after_image(self) -> torch.Tensor:
        """(B, L) bool: the real text tokens after each row's last visual token (all real text if none)."""
        idx = torch.arange(self.valid.shape[1], device=self.valid.device).expand_as(self.valid)
        last_vis = torch.where(self.visual, idx, -1).max(1).values  # (B,)
        return self.valid & ~self.visual & (idx > last_vis[:, None])


class InLLMPolicy:
    """Base class of the in-LLM methods (see the module doc)."""

    name = ""
    in_llm = True
    reference_positions = "retain"  # retain|reindex after a drop (cfg.inllm_positions overrides)
    emits_order = False

    def needs(self, cfg) -> tuple[str, ...]:  # pre-LLM inputs: none
        return ()

    def schedule(self, cfg: ReductionConfig, n_layers: int, n_visual: int) -> Schedule:
        raise NotImplementedError

    def decide(self, event: DropEvent, view: LayerView, cfg: ReductionConfig) -> Decision:
        raise NotImplementedError

    def partition(self, inp, n):  # the pre-LLM pipeline never runs an in-LLM method
        raise ValueError(f"method {self.name!r} reduces inside the LLM; reduce_visual_tokens does not run it")


def is_in_llm(method: Optional[str]) -> bool:
    return bool(getattr(registered_class(method), "in_llm", False))


def get_policy(method: str) -> InLLMPolicy:
    if not is_in_llm(method):
        known = [n for n in known_methods() if is_in_llm(n)]
        raise ValueError(f"{method!r} is not an in-LLM reduction method; known: {known}")
    return registered_class(method)()


def check_config(cfg: ReductionConfig) -> None:
    """In-LLM methods are comparison rows without RESTORE: refuse its switches, naming them."""
    on = [name for name, value in (("restore", cfg.restore), ("merge", cfg.merge), ("size_term", cfg.size_term),
                                   ("distance_term", cfg.distance_term)) if value]
    if cfg.position_mode == "retain":
        on.append("position_mode=retain")
    if on:
        raise ValueError(f"reduction method {cfg.method!r} drops tokens inside the LLM and is a comparison row "
                         f"without RESTORE; it cannot be combined with {', '.join(on)} (use inllm_positions to "
                         f"choose its positions)")


def query_rows(view: LayerView, cfg: ReductionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The query rows (B, n_q) and their weights (B, n_q) (rows of each sample sum to 1)."""
    last = view.last[:, None]  # (B, 1)
    if cfg.inllm_query == "last":
        return last, torch.ones_like(last, dtype=torch.float32)
    text = view.text_after_image()  # (B, L)
    n = text.sum(1)
    if bool((n == 0).any()):
        text = text | (torch.arange(text.shape[1], device=text.device)[None] == last)
        n = text.sum(1)
    idx = torch.arange(text.shape[1], device=text.device).expand_as(text)
    order = torch.where(text, idx, idx + text.shape[1]).argsort(1)[:, : int(n.max())]  # text rows first
    w = (torch.arange(order.shape[1], device=text.device)[None] < n[:, None]).float()
    rows = torch.where(w > 0, order, last)
    return rows, w / n[:, None].float()


def visual_scores(view: LayerView, cfg: ReductionConfig) -> torch.Tensor:
    """(B, L): attention of the query rows, mean over heads and (weighted) over the rows."""
    rows, w = query_rows(view, cfg)
    p = view.probs(rows).mean(1)  # (B, n_q, L) head mean
    return (p * w[:, :, None]).sum(1)


def keep_top_visual(event: DropEvent, view: LayerView, cfg: ReductionConfig) -> Decision:
    """Every real text token, and the ``event.keep`` (per image) visual tokens the query rows
    attend to most (FastV's and PDrop's rule)."""
    score = visual_scores(view, cfg)  # (B, L)
    keep_vis = topk_mask(score, view.visual & view.valid, event.keep * view.n_images)
    return Decision(keep=(view.valid & ~view.visual) | keep_vis)


def _check_layer(option: str, value: int, n_layers: int, shown=None) -> None:
    if not 1 <= value <= n_layers - 1:
        what = f"{option}={value}" if shown is None else f"{option}={shown}: layer {value}"
        raise ValueError(f"ReductionConfig.{what} is out of range for a {n_layers}-layer decoder: "
                         f"a drop happens before a layer in 1..{n_layers - 1}")


# ----------------------------------------------------------------------------- FastV
@register_reducer("fastv")
class FastV(InLLMPolicy):
    """Keep the R visual tokens the last token attends to most at layer K-1; drop the rest
    before layer K (FastV's in-place variant); positions retained."""

    reference_positions = "retain"

    def schedule(self, cfg, n_layers, n_visual):
        K, N, n = cfg.fastv_k, n_visual, cfg.n_vis
        _check_layer("fastv_k", K, n_layers)
        if cfg.fastv_keep is not None:
            R = cfg.fastv_keep
            if not 1 <= R <= N:
                raise ValueError(f"ReductionConfig.fastv_keep={R} must be in 1..N={N}")
        elif n is None:
            R = N
        elif cfg.inllm_budget == "kept":
            R = n
        else:  # the layer average (K N + (L - K) R) / L equals n_vis, R rounded to the nearest
            R = round((n_layers * n - K * N) / (n_layers - K))
            if R < 1:
                least = (K * N + n_layers - K) / n_layers
                raise ValueError(f"n_vis={n} cannot be met by FastV with fastv_k={K} on a {n_layers}-layer decoder "
                                 f"and N={N}: layers 0..{K - 1} see all N tokens, so the layer average is at least "
                                 f"{least:.1f} (lower fastv_k, or inllm_budget=kept)")
        if n is not None and not 1 <= n <= N:
            raise ValueError(f"ReductionConfig.n_vis={n} must be in 1..N={N}")
        counts = [N] * K + [R] * (n_layers - K)
        if cfg.fastv_keep is not None and n is not None and cfg.inllm_budget == "layer_average" \
                and abs(layer_average(counts) - n) > 1:
            raise ValueError(f"fastv_keep={R} gives a layer average of {layer_average(counts):.1f} visual tokens, "
                             f"not n_vis={n}; give one of them")
        return Schedule([DropEvent(K - 1, K, R, 1)], counts, N)

    def decide(self, event, view, cfg):
        return keep_top_visual(event, view, cfg)


# ----------------------------------------------------------------------------- PDrop
def pdrop_counts(N: int, lam: float, n_stages: int) -> list[int]:
    """Visual tokens per image in stages 0..n_stages: int(N * lam^s) (the reference's int())."""
    return [N] + [int(N * lam ** s) for s in range(1, n_stages + 1)]


def pdrop_layer_counts(N: int, lam: float, layers: list[int], n_layers: int) -> list[int]:
    per_stage = pdrop_counts(N, lam, len(layers))
    bounds = [0] + list(layers) + [n_layers]
    return [per_stage[s] for s in range(len(bounds) - 1) for _ in range(bounds[s], bounds[s + 1])]


def solve_lambda(N: int, n: float, layers: list[int], n_layers: int) -> float:
    """lambda in [0, 1] whose continuous layer average sum_s len_s N lambda^s / L equals n (bisection)."""
    bounds = [0] + list(layers) + [n_layers]
    lengths = [bounds[s + 1] - bounds[s] for s in range(len(bounds) - 1)]

    def avg(lam):
        return sum(ls * N * lam ** s for s, ls in enumerate(lengths)) / n_layers

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if avg(mid) < n else (lo, mid)
    return (lo + hi) / 2


@register_reducer("pdrop")
class PDrop(InLLMPolicy):
    """PyramidDrop: before each layer of ``pdrop_layers`` rank the visual tokens by that layer's
    attention of the last instruction token (q/k on the sequence entering it) and keep
    int(N lambda^s); positions reindexed after every drop."""

    reference_positions = "reindex"

    def schedule(self, cfg, n_layers, n_visual):
        layers, N, n = list(cfg.pdrop_layers), n_visual, cfg.n_vis
        if not layers:
            raise ValueError("ReductionConfig.pdrop_layers is empty: PDrop needs at least one stage boundary")
        for v in layers:
            _check_layer("pdrop_layers", v, n_layers, layers)
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ValueError(f"ReductionConfig.pdrop_layers={layers} must be strictly increasing")
        if n is not None and not 1 <= n <= N:
            raise ValueError(f"ReductionConfig.n_vis={n} must be in 1..N={N}")
        lam = cfg.pdrop_lambda
        if lam is not None:
            if not 0.0 < lam <= 1.0:
                raise ValueError(f"ReductionConfig.pdrop_lambda={lam} must be in (0, 1]")
        elif n is None or n == N:
            lam = 1.0
        elif cfg.inllm_budget == "kept":
            lam = (n / N) ** (1.0 / len(layers))
        else:
            least = layers[0] * N / n_layers
            if n <= least:
                raise ValueError(f"n_vis={n} cannot be met by PDrop with pdrop_layers={layers} on a {n_layers}-layer "
                                 f"decoder and N={N}: layers 0..{layers[0] - 1} see all N tokens, so the layer average "
                                 f"exceeds {least:.1f} (start the stages earlier, e.g. pdrop_layers=[2, 8, 16])")
            lam = solve_lambda(N, n, layers, n_layers)
        counts = pdrop_layer_counts(N, lam, layers, n_layers)
        if cfg.pdrop_lambda is not None and n is not None and cfg.inllm_budget == "layer_average" \
                and abs(layer_average(counts) - n) > 1:
            raise ValueError(f"pdrop_lambda={lam} gives a layer average of {layer_average(counts):.1f} visual tokens, "
                             f"not n_vis={n}; give one of them")
        per_stage = pdrop_counts(N, lam, len(layers))
        events = [DropEvent(layer, layer, per_stage[s + 1], s + 1) for s, layer in enumerate(layers)]
        return Schedule(events, counts, N)

    def decide(self, event, view, cfg):
        return keep_top_visual(event, view, cfg)


# ----------------------------------------------------------------------------- state
@dataclass
class KVStage:
    """Key metadata of the layers from ``start`` on (their cached keys are this layout's)."""

    start: int
    key_valid: torch.Tensor  # (B, Lk) bool
    key_pos: torch.Tensor  # (B, Lk) float
    key_visual: torch.Tensor  # (B, Lk) bool
    pos_shift: torch.Tensor  # (B,) float: a decode token's position here = its position at layer 0 - shift

    def select_rows(self, rows: torch.Tensor) -> None:
        for name in ("key_valid", "key_pos", "key_visual", "pos_shift"):
            setattr(self, name, getattr(self, name).index_select(0, rows))

    def append(self, q_pos: torch.Tensor) -> None:
        """Add T decode tokens at layer-0 positions q_pos (B, T)."""
        B, T = q_pos.shape
        self.key_valid = torch.cat([self.key_valid, torch.ones(B, T, dtype=torch.bool, device=q_pos.device)], 1)
        self.key_pos = torch.cat([self.key_pos, q_pos - self.pos_shift[:, None]], 1)
        self.key_visual = torch.cat([self.key_visual, torch.zeros(B, T, dtype=torch.bool, device=q_pos.device)], 1)


def restage(ctx, key_valid: torch.Tensor, key_pos: torch.Tensor, query_pos: torch.Tensor):
    """A fresh AttnContext over another key set (no calibration terms: in-LLM rows run plain)."""
    return replace(ctx, key_valid=key_valid, key_pos=key_pos, query_pos=query_pos, key_log_size=None,
                   key_log_size_l0=None, distance=False, distance_keys=None, _dense={}, _flex={})


@dataclass
class InLLMReport:
    """Per row: real visual tokens and real tokens at every layer (B, n_layers), and the schedule."""

    visual_per_layer: torch.Tensor
    tokens_per_layer: torch.Tensor
    schedule: Schedule
    kept: list = field(default_factory=list)  # per drop: (B, L0) bool over the input layout, True = still there
    # per drop: (event, real tokens entering it (B,), query rows ranked with) -- for the FLOP count
    scored: list = field(default_factory=list)

    @property
    def average(self) -> torch.Tensor:
        """(B,) visual tokens averaged over the layers, per image."""
        return self.visual_per_layer.float().mean(1)

    def summary(self) -> dict:
        return self.schedule.summary()


class InLLMState:
    """Per-forward hooks of one prefill (see ``LlamaDecoder.forward``)."""

    def __init__(self, policy: InLLMPolicy, cfg: ReductionConfig, schedule: Schedule, valid, visual, positions,
                 next_pos, padding_side: str, cache=None):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.policy, self.cfg, self.schedule = policy, cfg, schedule
        self.mode = cfg.inllm_positions or policy.reference_positions
        self.left = padding_side == "left"
        self.valid, self.visual, self.positions = valid, visual, positions  # current layout (B, L)
        self.orig = torch.arange(valid.shape[1], device=valid.device).expand_as(valid).clone()  # (B, L) input index
        self.L0 = valid.shape[1]
        self.valid0, self.visual0, self.h0 = valid, visual, None  # h0: set at layer 0 (the input embeddings)
        self.next_pos0 = next_pos  # (B,) layer-0 next position
        self.cache = cache
        n_vis_rows = visual.sum(1)
        N = schedule.n_visual
        if bool((n_vis_rows % N != 0).any()):
            raise ValueError(f"in-LLM reduction expects N={N} visual tokens per image; rows have {n_vis_rows.tolist()}")
        self.n_images = n_vis_rows // N  # (B,)
        self.events_by_drop = {e.drop_layer: e for e in schedule.events}
        self.own = {e.score_layer: e for e in schedule.events if e.score_layer == e.drop_layer - 1}
        self.seen: dict[int, tuple] = {}  # score_layer -> (q, k)
        n_layers = len(schedule.counts)
        self.visual_per_layer = torch.zeros(valid.shape[0], n_layers, dtype=torch.long, device=valid.device)
        self.tokens_per_layer = torch.zeros_like(self.visual_per_layer)
        self.kept: list = []
        self.scored: list = []

    # ------------------------------------------------------------------ hooks
    def probe(self, i: int):
        if i not in self.own:
            return None

        def record(q, k):
            self.seen[i] = (q, k)

        return record

    def before_layer(self, i, decoder, h, positions, cos, sin, ctx):
        if i == 0:
            self.h0 = h
        out = None
        event = self.events_by_drop.get(i)
        if event is not None:
            if event.score_layer == i:  # the layer's q/k on the sequence entering it
                layer = decoder.layers[i]
                q, k, _ = layer.self_attn.project(layer.input_layernorm(h), cos, sin)
            else:
                q, k = self.seen.pop(event.score_layer)
            view = LayerView(h=h, visual=self.visual, valid=self.valid, positions=positions, n_images=self.n_images,
                             h0=self.h0, valid0=self.valid0, visual0=self.visual0, orig=self.orig,
                             k=k, q_rows=lambda rows, q=q: q.gather(2, rows[:, None, :, None].expand(
                                 q.shape[0], q.shape[1], rows.shape[1], q.shape[3])))
            decision = self.policy.decide(event, view, self.cfg)
            self.scored.append((event, self.valid.sum(1), view.n_q))
            out = self.apply(i, decision, h, positions, ctx)
        self.visual_per_layer[:, i] = (self.visual & self.valid).sum(1)
        self.tokens_per_layer[:, i] = self.valid.sum(1)
        return out

    def finish(self, h: torch.Tensor) -> torch.Tensor:
        """(B, L, D) back to the input layout (B, L0, D); dropped tokens' rows are zeros."""
        if h.shape[1] == self.L0 and bool((self.orig == torch.arange(self.L0, device=h.device)).all()):
            return h
        out = h.new_zeros(h.shape[0], self.L0, h.shape[2])
        ok = self.valid & (self.orig >= 0)
        b, j = ok.nonzero(as_tuple=True)
        out[b, self.orig[b, j]] = h[b, j]
        return out

    def report(self) -> InLLMReport:
        return InLLMReport(self.visual_per_layer, self.tokens_per_layer, self.schedule, self.kept, self.scored)

    # ------------------------------------------------------------------ the drop
    def apply(self, i, decision: Decision, h, positions, ctx):
        keep = decision.keep & self.valid
        lost_text = self.valid & ~self.visual & ~keep
        if bool(lost_text.any()):
            raise ValueError(f"in-LLM policy {self.policy.name!r} dropped text tokens at layer {i}")
        B, L = keep.shape
        idx = torch.arange(L, device=keep.device, dtype=torch.float32).expand(B, L)
        hs, pos, vis, orig, kept, key = [h], [positions], [self.visual], [self.orig], [keep], [2 * idx]
        if decision.extra_h is not None:
            m = decision.extra_h.shape[1]
            ev = decision.extra_valid if decision.extra_valid is not None else torch.ones(
                B, m, dtype=torch.bool, device=keep.device)
            last_vis = torch.where(self.visual, idx, -1.0).max(1).values  # (B,) the image span's end
            hs.append(decision.extra_h.to(h.dtype))
            pos.append(decision.extra_pos.float())
            vis.append(torch.ones(B, m, dtype=torch.bool, device=keep.device))
            orig.append(torch.full((B, m), -1, dtype=torch.long, device=keep.device))
            kept.append(ev)
            key.append(2 * last_vis[:, None] + 1 + torch.arange(m, device=keep.device)[None] / (m + 1))
        h_all, pos_all, vis_all = torch.cat(hs, 1), torch.cat(pos, 1), torch.cat(vis, 1)
        orig_all, kept_all, key_all = torch.cat(orig, 1), torch.cat(kept, 1), torch.cat(key, 1)
        big = 4.0 * (L + 2)
        # stable order: kept tokens in sequence order, padding on the original side
        sort_key = torch.where(kept_all, key_all, key_all - big if self.left else key_all + big)
        order = sort_key.argsort(dim=1, stable=True)
        n_new = int(kept_all.sum(1).max())
        order = order[:, -n_new:] if self.left else order[:, :n_new]  # (B, L')
        self.valid = kept_all.gather(1, order)
        self.visual = vis_all.gather(1, order) & self.valid
        self.orig = torch.where(self.valid, orig_all.gather(1, order), -1)
        h_new = gather_rows(h_all, order)
        if self.mode == "retain":
            new_pos = pos_all.gather(1, order)
            shift = torch.zeros(B, device=keep.device)
        else:  # 0, 1, ... over each row's remaining tokens
            new_pos = ((self.valid.cumsum(1) - 1) * self.valid).float()
            shift = self.next_pos0 - self.valid.sum(1).float()
        new_pos = torch.where(self.valid, new_pos, torch.zeros_like(new_pos))
        still = torch.zeros(B, self.L0, dtype=torch.bool, device=keep.device)
        ok = self.orig >= 0
        still[ok.nonzero(as_tuple=True)[0], self.orig[ok]] = True
        self.kept.append(still)
        if self.cache is not None:
            self.cache.stages.append(KVStage(i, self.valid, new_pos, self.visual, shift))
        return h_new, new_pos, restage(ctx, self.valid, new_pos, new_pos)


class DecodeStages:
    """Hooks of one decode step: from each stage's first layer on, attend to its kept keys, with the
    query at that stage's position."""

    def __init__(self, stages: list[KVStage], q_pos: torch.Tensor):
        self.stages = {s.start: s for s in stages}
        self.q_pos = q_pos  # (B, T) layer-0 positions

    def probe(self, i):
        return None

    def before_layer(self, i, decoder, h, positions, cos, sin, ctx):
        s = self.stages.get(i)
        if s is None:
            return None
        q_pos = self.q_pos - s.pos_shift[:, None]
        new_pos = positions if torch.equal(q_pos, positions) else q_pos
        return h, new_pos, restage(ctx, s.key_valid, s.key_pos, q_pos)

    def finish(self, h):
        return h


def build_state(cfg: ReductionConfig, n_layers: int, n_visual: int, valid, visual, positions, next_pos,
                padding_side: str, cache=None) -> InLLMState:
    """The prefill state for a resolved in-LLM ``cfg`` (validated; errors name the bad option)."""
    check_config(cfg)
    policy = get_policy(cfg.method)
    schedule = policy.schedule(cfg, n_layers, n_visual)
    return InLLMState(policy, cfg, schedule, valid, visual, positions, next_pos, padding_side, cache)


def schedule_summary(cfg: ReductionConfig, n_layers: int, n_visual: int) -> dict:
    """What a run's stats record for an in-LLM ``cfg``: the layer-average n_vis and the visual
    tokens per image at every layer (from the schedule; ``Prepared.inllm`` has the measured ones)."""
    return get_policy(cfg.method).schedule(cfg, n_layers, n_visual).summary() | {"method": cfg.method}
