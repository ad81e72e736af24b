"""Typed reduction config (spec §1-§5). Built with OmegaConf.structured so typos fail by key name.

Fields left at ``None`` are *preset-dependent*: ``resolve()`` fills them from the ``restore``
preset.  With ``restore=True`` the defaults are the reference defaults of RESTORE_SPEC.md
(split 0.5, Stage-B merging with the ``reference`` anchor rule, retained lower-median positions,
size term with layer-0 uniform size, distance term c=2 on all pairs in prefill only).
Without it, the method prunes to ``n_vis`` with ``reindex`` positions and plain attention.

Every default reproduces the reference implementations' outputs wherever they are
deterministic (quirks included); each cleaner or older variant is a named option, off by
default (docs/restore.md, "Deviations and design choices").
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import List, Optional

from omegaconf import OmegaConf

POSITION_MODES = ("reindex", "retain")
POSITION_REPS = ("first", "median", "last", "mean")
DISTANCE_SCOPES = ("all", "visual_keys")
ATTN_BACKENDS = ("eager", "sdpa", "flex")
TOKEN_ORDERS = ("reference", "position")
HOLOV_REDISTRIBUTIONS = ("reference", "fill")
VISIONZIP_METRICS = ("keys", "projected")
VISIONZIP_MERGES = ("reference", "mean")
INLLM_BUDGETS = ("layer_average", "kept")
INLLM_QUERIES = ("last", "instruction")
SPARSEVLM_COUNTS = ("fixed", "rank")
SPARSEVLM_CLAMPS = ("all", "reference")


@dataclass
class ReductionConfig:
    method: str = "none"  # registry name; "none" keeps all N visual tokens
    n_vis: Optional[int] = None  # output budget n (1 <= n <= N); None = N
    keep_ratio: Optional[float] = None  # instead of n_vis: n = max(1, floor(keep_ratio * N)) per image, in (0, 1]
    restore: bool = False  # preset switch (see module doc)
    split_ratio: float = 0.5  # n_keep = floor(n * split_ratio) when merging
    merge: Optional[bool] = None  # Stage B on/off
    anchor_rule: str = "reference"  # reference|dpc_higher|bipartite|uniform|random|kmeans
    position_mode: Optional[str] = None  # reindex|retain
    position_rep: str = "median"  # first|median|last|mean (retain only)
    size_term: Optional[bool] = None  # + log s_j
    layer0_uniform_size: bool = True  # layer 0 uses N/n for every visual key
    distance_term: Optional[bool] = None  # + log(c - D(p_i - p_j))
    distance_c: float = 2.0
    distance_scope: str = "all"  # all|visual_keys
    distance_in_decode: bool = False
    attn_backend: str = "sdpa"  # eager|sdpa|flex
    seed: int = 0
    # reference|position: the LLM order of the visual tokens when pruning alone (merge off,
    # reindex positions); with merging or retained positions they are always ordered by position
    token_order: str = "reference"
    # method hyper-parameters (reference values)
    vispruner_important_ratio: float = 0.5
    holov_num_chunks: int = 16
    holov_var_excludes_self: bool = False  # True: variance over the other tokens only (not the reference)
    holov_single_token_scaled: bool = False  # True: a one-token chunk scores 1000*a (the reference: raw a)
    holov_redistribute: str = "reference"  # reference|fill: how the clamped excess is handed out
    visionzip_dominant_ratio: float = 54 / 64  # VisionZip's 54 dominant + 10 contextual at 64
    visionzip_cls: bool = True  # the CLS token is one of the dominant tokens (the reference)
    visionzip_metric: str = "keys"  # keys|projected: contextual similarity space
    visionzip_merge: str = "reference"  # reference: target + mean(members) before the projector; mean: projected mean
    kmeans_iters: int = 10
    # in-LLM methods (fastv, pdrop: llava_restore/reduction/inllm.py, docs/restore.md "In-LLM reduction")
    inllm_budget: str = "layer_average"  # n_vis = mean visual tokens over the layers | kept: after the last drop
    inllm_query: str = "last"  # last: the last prompt token | instruction: mean over the text after the image
    inllm_positions: Optional[str] = None  # retain|reindex after a drop; None = the method's reference
    fastv_k: int = 2  # FastV drops before layer K, ranking by layer K-1's attention
    fastv_keep: Optional[int] = None  # R tokens kept from layer K on; None = from n_vis
    pdrop_layers: List[int] = field(default_factory=lambda: [2, 8, 16])  # stage starts (drops before them)
    pdrop_lambda: Optional[float] = None  # stage s keeps int(N * lambda^s); None = from n_vis
    # SparseVLM (llava_restore/reduction/sparsevlm.py, docs/restore.md "SparseVLM")
    sparsevlm_count: str = "fixed"  # fixed: the official v1.5 counts per n_vis | rank: v1's int(rank * scale + bias)
    sparsevlm_layers: Optional[List[int]] = None  # drops after these layers; None = 2, 6, 15 (rank: + 19) of 32, scaled
    sparsevlm_schedule: Optional[List[int]] = None  # fixed: tokens kept at each of them; None = official for n_vis
    sparsevlm_rank_scale: Optional[float] = None  # rank: None = v1's value for n_vis (192: 13.5, 128: 9, 64: 0.8)
    sparsevlm_rank_bias: Optional[float] = None  # rank: None = v1's value for n_vis (192: 0, 128: 6, 64: 0)
    sparsevlm_recycle: bool = True  # merge the best-rated deleted tokens into a few (token recycling)
    sparsevlm_recycle_ratio: float = 0.3  # recycle int(ratio * deleted) + 1 of them ...
    sparsevlm_cluster_div: int = 10  # ... into int(recycled / div) + 1 DPC-kNN clusters
    sparsevlm_clamp: str = "all"  # all: a count >= the tokens there keeps them all | reference: min(count, n - 1)

    # ---------------------------------------------------------------- helpers
    def resolve(self) -> "ReductionConfig":
        """Return a copy with every preset-dependent field filled in, validated."""
        r = self.restore
        out = replace(
            self,
            merge=r if self.merge is None else self.merge,
            position_mode=("retain" if r else "reindex") if self.position_mode is None else self.position_mode,
            size_term=r if self.size_term is None else self.size_term,
            distance_term=r if self.distance_term is None else self.distance_term,
        )
        out.validate()
        return out

    def validate(self) -> None:
        def check(name, value, allowed):
            if value not in allowed:
                raise ValueError(f"ReductionConfig.{name}={value!r} is not one of {list(allowed)}")

        if self.position_mode is not None:
            check("position_mode", self.position_mode, POSITION_MODES)
        check("position_rep", self.position_rep, POSITION_REPS)
        check("distance_scope", self.distance_scope, DISTANCE_SCOPES)
        check("attn_backend", self.attn_backend, ATTN_BACKENDS)
        check("token_order", self.token_order, TOKEN_ORDERS)
        check("holov_redistribute", self.holov_redistribute, HOLOV_REDISTRIBUTIONS)
        check("visionzip_metric", self.visionzip_metric, VISIONZIP_METRICS)
        check("visionzip_merge", self.visionzip_merge, VISIONZIP_MERGES)
        check("inllm_budget", self.inllm_budget, INLLM_BUDGETS)
        check("inllm_query", self.inllm_query, INLLM_QUERIES)
        if self.inllm_positions is not None:
            check("inllm_positions", self.inllm_positions, POSITION_MODES)
        check("sparsevlm_count", self.sparsevlm_count, SPARSEVLM_COUNTS)
        check("sparsevlm_clamp", self.sparsevlm_clamp, SPARSEVLM_CLAMPS)
        if not 0.0 < self.sparsevlm_recycle_ratio < 1.0:
            raise ValueError(f"ReductionConfig.sparsevlm_recycle_ratio={self.sparsevlm_recycle_ratio} must be in (0, 1)")
        if self.sparsevlm_cluster_div < 1:
            raise ValueError(f"ReductionConfig.sparsevlm_cluster_div={self.sparsevlm_cluster_div} must be >= 1")
        if not 0.0 <= self.split_ratio <= 1.0:
            raise ValueError(f"ReductionConfig.split_ratio={self.split_ratio} must be in [0, 1]")
        if self.keep_ratio is not None and not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"ReductionConfig.keep_ratio={self.keep_ratio} must be in (0, 1]")
        if self.keep_ratio is not None and self.n_vis is not None:
            raise ValueError(f"ReductionConfig: give n_vis ({self.n_vis}) or keep_ratio ({self.keep_ratio}), not both")
        if self.n_vis is not None and self.n_vis < 1:
            raise ValueError(f"ReductionConfig.n_vis={self.n_vis} must be >= 1")
        if self.distance_c <= 1.0:
            # D(d) ranges in [-1, 1], so c must exceed 1 for log(c - D) to be finite everywhere.
            raise ValueError(f"ReductionConfig.distance_c={self.distance_c} must be > 1")

    def budget(self, N: int) -> int:
        """The output budget n for N visual tokens: n_vis, max(1, floor(keep_ratio * N)), or N."""
        if self.keep_ratio is not None:
            return max(1, int(self.keep_ratio * N))  # floor (keep_ratio * N >= 0)
        return N if self.n_vis is None else int(self.n_vis)

    @property
    def reference_order(self) -> bool:
        """True when the visual tokens enter the LLM in the base method's own output order
        (plain pruning with ``token_order: reference``); otherwise they are ordered by position."""
        return self.token_order == "reference" and not self.merge and self.position_mode == "reindex"

    @property
    def calibrated(self) -> bool:
        """True when any attention term is on (needs a resolved config)."""
        return bool(self.size_term) or bool(self.distance_term)


def make_reduction_config(overrides: dict | list[str] | None = None, **kwargs) -> ReductionConfig:
    """Build a ReductionConfig via OmegaConf.structured; unknown keys fail naming the key.

    ``overrides`` may be a dict or a list of ``key=value`` strings (the CLI's --reduction-opts).
    """
    base = OmegaConf.structured(ReductionConfig)
    merged = OmegaConf.merge(base, OmegaConf.create(kwargs)) if kwargs else base
    if overrides:
        if isinstance(overrides, dict):
            merged = OmegaConf.merge(merged, OmegaConf.create(overrides))
        else:
            for item in overrides:
                if "=" not in item:
                    raise ValueError(f"--reduction-opts item {item!r} is not of the form key=value")
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    cfg: ReductionConfig = OmegaConf.to_object(merged)
    cfg.validate()
    return cfg


def config_field_names() -> list[str]:
    return [f.name for f in fields(ReductionConfig)]
