"""Causal self-attention with RESTORE's optional calibration terms (spec §5).

Pre-softmax logits for an allowed (causal, non-padding) pair (i, j):

    q_i.k_j / sqrt(d)  [+ log s_j]  [+ log(c - D(p_i - p_j))]

All per-forward state lives in one explicit ``AttnContext`` built by the LLaVA wrapper and passed
down to every layer; nothing is stored on modules.  Backends:

- ``eager``: explicit logits + bias + softmax (the reference);
- ``sdpa``: one dense additive bias per forward (built once from a distance table and shared by all
  layers, in the query dtype), fed to ``scaled_dot_product_attention``;
- ``flex``: FlexAttention with a ``score_mod`` (per-key size bias + a distance lookup table) and a
  causal/padding block mask; no L x L tensor is materialised.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F

from llava_restore.reduction.distance import distance_bias

NEG_INF = float("-inf")

# --sdpa-kernel: which of PyTorch's scaled_dot_product_attention back-ends the sdpa backend may use
SDPA_KERNELS = ("auto", "flash", "efficient", "cudnn", "math", "no-cudnn")


def sdpa_kernels(name: str):
    """Context restricting F.scaled_dot_product_attention: 'auto' = PyTorch's own choice, 'no-cudnn' =
    flash, memory-efficient or math (PyTorch picks among them), else exactly that back-end."""
    if name not in SDPA_KERNELS:
        raise ValueError(f"unknown SDPA kernel {name!r}; known: {', '.join(SDPA_KERNELS)}")
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    one = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
           "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    allowed = [one["flash"], one["efficient"], one["math"]] if name == "no-cudnn" else [one[name]]
    return sdpa_kernel(allowed)


@dataclass
class AttnContext:
    """Everything attention needs for one forward (prefill or one decode step).

    Shapes: Lq queries (this forward), Lk keys (cache + this forward), queries are the last Lq keys.
    """

    key_valid: torch.Tensor  # (B, Lk) bool, False for padding keys
    query_pos: torch.Tensor  # (B, Lq) float RoPE positions of the queries
    key_pos: torch.Tensor  # (B, Lk) float RoPE positions of the keys
    backend: str = "sdpa"
    key_log_size: torch.Tensor | None = None  # (B, Lk) log s_j, or None (size term off)
    key_log_size_l0: torch.Tensor | None = None  # (B, Lk) layer-0 variant (uniform N/n)
    distance: bool = False  # distance term on for this forward
    distance_keys: torch.Tensor | None = None  # (B, Lk) bool: keys the term applies to (None = all)
    c: float = 2.0
    rope_theta: float = 10000.0
    head_dim: int = 128
    # M-RoPE (Qwen2.5-VL): query_pos/key_pos are (B, L, 3) (t, h, w) and the distance term is
    # reduction/mrope.py's D(Δ) = mean_k cos(Δ_axis(k) θ_k); None = 1-D RoPE positions (B, L)
    mrope_section: tuple[int, ...] | None = None
    mrope_interleaved: bool = False  # Qwen3-VL's interleaved frequency-to-axis assignment
    # analysis only: the eager backend calls it with (layer_idx, probs (B, H, Lq, Lk)) after softmax
    record_probs: Callable[[int, torch.Tensor], None] | None = field(default=None, repr=False)
    _dense: dict = field(default_factory=dict, repr=False)  # cached per-forward dense biases
    _flex: dict = field(default_factory=dict, repr=False)

    @property
    def q_len(self) -> int:
        return self.query_pos.shape[1]

    @property
    def k_len(self) -> int:
        return self.key_pos.shape[1]

    @property
    def plain(self) -> bool:
        return self.key_log_size is None and not self.distance

    def allowed(self) -> torch.Tensor:
        """(B, Lq, Lk) bool: causal & valid key; a padding query may see itself (avoids NaN rows).
        Without padding keys the (1, Lq, Lk) causal mask (it broadcasts over B)."""
        Lq, Lk = self.q_len, self.k_len
        off = Lk - Lq
        dev = self.key_valid.device
        causal = torch.ones(Lq, Lk, dtype=torch.bool, device=dev).tril_(off)  # (Lq, Lk): kj <= qi + off
        if self.all_keys_valid:
            return causal[None]
        qi = torch.arange(Lq, device=dev)[:, None] + off
        kj = torch.arange(Lk, device=dev)[None, :]
        return causal[None] & (self.key_valid[:, None, :] | (kj == qi)[None])

    def size_bias(self, layer_idx: int) -> torch.Tensor | None:
        if self.key_log_size is None:
            return None
        if layer_idx == 0 and self.key_log_size_l0 is not None:
            return self.key_log_size_l0
        return self.key_log_size

    def distance_bias(self) -> torch.Tensor | None:
        """(B, Lq, Lk) float32 distance term (0 where not applied), or None."""
        if not self.distance:
            return None
        if "dist" not in self._dense and self.mrope_section is not None:
            from llava_restore.reduction.mrope import mrope_dense_bias

            bias = mrope_dense_bias(self.query_pos, self.key_pos, self.rope_theta, self.head_dim, self.mrope_section,
                                    self.c, self.mrope_interleaved)
            if self.distance_keys is not None:
                bias = bias * self.distance_keys[:, None, :]
            self._dense["dist"] = bias
        if "dist" not in self._dense:
            ints = self._integer_offsets()
            if ints is not None:  # integer positions: the table read by index
                table, offset = ints
                bias = table.index_select(0, offset.view(-1)).view(offset.shape)
            else:
                qd, kd = self.query_pos.double(), self.key_pos.double()
                bias = distance_bias(qd[:, :, None] - kd[:, None, :], self.rope_theta, self.head_dim, self.c).float()
            if self.distance_keys is not None:
                bias = bias * self.distance_keys[:, None, :]
            self._dense["dist"] = bias
        return self._dense["dist"]

    def _integer_positions(self) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """(qi (B, Lq) int32, ki (B, Lk) int32, half) when every 1-D position is an integer, else None;
        half = ``offset_half_width`` of the largest |p_i - p_j|.  One host read: the position range and
        the count of fractional positions.  In prefill the query positions are the key positions (the
        same tensor), so only they are read."""
        kp = self.key_pos
        ki = kp.int()  # (B, Lk)
        same = self.query_pos is self.key_pos
        if same:
            qi = ki
            stats = torch.stack([*torch.aminmax(ki), (ki != kp).sum(dtype=torch.int32)])
        else:
            qi = self.query_pos.int()  # (B, Lq)
            stats = torch.stack([*torch.aminmax(ki), *torch.aminmax(qi),
                                 (ki != kp).sum(dtype=torch.int32) + (qi != self.query_pos).sum(dtype=torch.int32)])
        k_lo, k_hi, *rest = stats.tolist()
        q_lo, q_hi, n_frac = (k_lo, k_hi, rest[0]) if same else rest
        if n_frac:
            return None
        return qi, ki, offset_half_width(max(q_hi - k_lo, k_hi - q_lo))

    def _integer_offsets(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(table, offset) for integer positions, else None.  table: ``offset_table`` (float32,
        log(c - D(d)) for d = -half..half, then -inf); offset (B, Lq, Lk) int32: the index of p_i - p_j."""
        ints = self._integer_positions()
        if ints is None:
            return None
        qi, ki, half = ints
        table = offset_table(half, self.rope_theta, self.head_dim, self.c, ki.device)
        return table, (qi + half)[:, :, None] - ki[:, None, :]  # offset in [0, 2 half]

    @property
    def all_keys_valid(self) -> bool:
        """No padding key (one host read per forward, not per layer)."""
        if "all_valid" not in self._dense:
            self._dense["all_valid"] = bool(self.key_valid.all())
        return self._dense["all_valid"]

    def _masked_distance(self) -> torch.Tensor:
        """(B, Lq, Lk) float32: the distance term (0 when off) where allowed, -inf elsewhere; once per forward."""
        if "masked" not in self._dense:
            self._dense["masked"] = self._build_masked()
        return self._dense["masked"]

    def _build_masked(self) -> torch.Tensor:
        dev = self.key_valid.device
        if self.all_keys_valid and not self.distance:  # the causal mask alone, as 0 / -inf
            return torch.full((1, self.q_len, self.k_len), NEG_INF, device=dev).triu_(self.k_len - self.q_len + 1)
        if self.all_keys_valid:
            future = future_keys(self.q_len, self.k_len, dev)  # (1, Lq, Lk) bool: kj > qi + off
            if self.distance_keys is None and self.mrope_section is None:
                ints = self._integer_offsets()
                if ints is not None:  # the causal mask read from the table too: its last entry is -inf
                    table, offset = ints
                    offset.masked_fill_(future, table.numel() - 1)
                    return table.index_select(0, offset.view(-1)).view(offset.shape)
            return self.distance_bias().masked_fill(future, NEG_INF)
        dist = self.distance_bias()
        fill = torch.zeros((), dtype=torch.float32, device=dev) if dist is None else dist
        return torch.where(self.allowed(), fill, NEG_INF)

    def dense_bias(self, layer_idx: int, dtype: torch.dtype) -> torch.Tensor:
        """(B, 1, Lq, Lk) additive bias incl. the mask (-inf where not allowed), in ``dtype``: summed in
        float32, rounded once.  Built once per forward and size variant (layer 0's uniform sizes)."""
        key = ("l0" if layer_idx == 0 and self.key_log_size_l0 is not None else "ln", dtype)
        if key not in self._dense:
            bias = self._masked_distance()
            size = self.size_bias(layer_idx)
            if size is not None:
                bias = bias + size[:, None, :].float()
            self._dense[key] = bias[:, None].to(dtype)
        return self._dense[key]


@lru_cache(maxsize=16)
def distance_table(lo: int, hi: int, rope_theta: float, head_dim: int, c: float, device: torch.device) -> torch.Tensor:
    """(hi - lo + 1,) float32 log(c - D(d)) for d = lo..hi (computed in float64).  Memoised: a pure
    function of its arguments, reused by every forward with the same offsets; callers only read it."""
    d = torch.arange(lo, hi + 1, device=device, dtype=torch.float64)
    return distance_bias(d, rope_theta, head_dim, c).float()


def offset_half_width(span: int) -> int:
    """The half width of the offset table that covers |p_i - p_j| <= span: the next power of two, so
    prompts of nearby lengths share one memoised table."""
    return 1 << max(span, 1).bit_length()


@lru_cache(maxsize=16)
def offset_table(half: int, rope_theta: float, head_dim: int, c: float, device: torch.device) -> torch.Tensor:
    """(2 half + 2,) float32: ``distance_table(-half, half)`` and then -inf (index 2 half + 1), the value
    of a masked pair.  Memoised like ``distance_table``; callers only read it."""
    table = distance_table(-half, half, rope_theta, head_dim, c, device)
    return torch.cat([table, table.new_full((1,), NEG_INF)])


FUTURE_CACHE_MAX = 1 << 20  # memoise causal masks of up to this many (Lq x Lk) entries (1 MiB of bool)


def future_keys(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """(1, Lq, Lk) bool, True where key j comes after query i (j > i + Lk - Lq).  Memoised per shape
    up to FUTURE_CACHE_MAX entries, the last 32 shapes (an eval sees few prompt lengths); callers only read it."""
    if q_len * k_len > FUTURE_CACHE_MAX:
        return _future_keys_uncached(q_len, k_len, device)
    return _future_keys_cached(q_len, k_len, device)


def _future_keys_uncached(q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).triu_(k_len - q_len + 1)[None]


_future_keys_cached = lru_cache(maxsize=32)(_future_keys_uncached)  # at most 32 MiB


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:  # (B, Hkv, L, d) -> (B, Hkv*n_rep, L, d)
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def eager_attention(q, k, v, ctx: AttnContext, layer_idx: int) -> torch.Tensor:
    """q (B, H, Lq, d), k/v (B, Hkv, Lk, d) -> (B, H, Lq, d).  The reference computation."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
    logits = logits + ctx.dense_bias(layer_idx, torch.float32)
    probs = torch.softmax(logits, dim=-1)
    if ctx.record_probs is not None:
        ctx.record_probs(layer_idx, probs)
    return (probs @ v.float()).to(q.dtype)


def sdpa_attention(q, k, v, ctx: AttnContext, layer_idx: int) -> torch.Tensor:
    n_rep = q.shape[1] // k.shape[1]
    gqa = n_rep > 1
    if ctx.plain and ctx.q_len == ctx.k_len and ctx.all_keys_valid:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.dense_bias(layer_idx, q.dtype), enable_gqa=gqa)


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex_parts(ctx: AttnContext, layer_idx: int):
    """Block mask + score_mod for this forward (built once per forward, per size-bias variant)."""
    from torch.nn.attention.flex_attention import create_block_mask

    if "mask" not in ctx._flex:
        valid = ctx.key_valid
        off = ctx.k_len - ctx.q_len

        def mask_mod(b, h, q_idx, kv_idx):
            qi = q_idx + off
            return (kv_idx <= qi) & (valid[b, kv_idx] | (kv_idx == qi))

        ctx._flex["mask"] = create_block_mask(mask_mod, B=valid.shape[0], H=None, Q_LEN=ctx.q_len,
                                              KV_LEN=ctx.k_len, device=valid.device)
        if ctx.distance and ctx.mrope_section is not None:  # M-RoPE: the dense (B, Lq, Lk) term, read by index
            ctx._flex["mrope_dist"] = ctx.distance_bias()
        elif ctx.distance:
            ints = ctx._integer_positions()
            if ints is None:
                raise ValueError("attn_backend=flex needs integer positions; position_rep=mean gives "
                                 "fractional ones: use attn_backend=sdpa or eager")
            qi, ki, half = ints  # a power-of-two table: fewer distinct shapes for the compiled kernel
            table = offset_table(half, ctx.rope_theta, ctx.head_dim, ctx.c, qi.device)
            ctx._flex["dist"] = (table, qi.long() + half, ki.long())
            ctx._flex["dkeys"] = None if ctx.distance_keys is None else ctx.distance_keys.float()
    return ctx._flex["mask"]


def flex_attention_fwd(q, k, v, ctx: AttnContext, layer_idx: int) -> torch.Tensor:
    if ctx.q_len == 1 or q.device.type == "cpu" and ctx.q_len < 16:
        # decode steps: the dense bias is only (B, 1, 1, Lk); SDPA is the fast path here
        return sdpa_attention(q, k, v, ctx, layer_idx)
    block_mask = _flex_parts(ctx, layer_idx)
    size = ctx.size_bias(layer_idx)
    size = None if size is None else size.float()
    dist = ctx._flex.get("dist")
    mdist = ctx._flex.get("mrope_dist")  # (B, Lq, Lk) or None
    dkeys = ctx._flex.get("dkeys")

    if size is None and dist is None and mdist is None:
        score_mod = None
    else:
        def score_mod(score, b, h, q_idx, kv_idx):
            out = score
            if size is not None:
                out = out + size[b, kv_idx]
            if dist is not None:
                table, qpos, kpos = dist
                term = table[qpos[b, q_idx] - kpos[b, kv_idx]]
                out = out + (term if dkeys is None else term * dkeys[b, kv_idx])
            if mdist is not None:
                out = out + mdist[b, q_idx, kv_idx]  # distance_keys already applied
            return out

    n_rep = q.shape[1] // k.shape[1]
    return _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=n_rep > 1)


BACKENDS = {"eager": eager_attention, "sdpa": sdpa_attention, "flex": flex_attention_fwd}


def attention(q, k, v, ctx: AttnContext, layer_idx: int) -> torch.Tensor:
    if ctx.backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {ctx.backend!r}; known: {sorted(BACKENDS)}")
    if ctx.record_probs is not None and ctx.backend != "eager":
        raise ValueError(f"AttnContext.record_probs needs the eager backend (explicit probabilities), not {ctx.backend!r}")
    return BACKENDS[ctx.backend](q, k, v, ctx, layer_idx)
