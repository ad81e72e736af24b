"""Visual-token reduction (RESTORE_SPEC.md §1-§5): base pruners, ToMe, Stage-B anchor merging,
positions and the distance term.  Importing this package registers every reducer."""
from . import divprune, holov, inllm, random_prune, sparsevlm, tome, uniform, vispruner, visionzip  # noqa: F401  (registration)
from .anchors import ANCHOR_RULES, anchor_merge
from .bipartite import tome_partition
from .config import ReductionConfig, config_field_names, make_reduction_config
from .distance import distance_bias, rope_decay
from .divprune import divprune_select
from .holov import holov_allocate, holov_chunk_scores, holov_select
from .pipeline import needed_inputs, reduce_visual_tokens
from .positions import group_sizes, representative_positions
from .random_prune import random_select
from .registry import get_reducer, known_methods, known_reducers, register_reducer
from .types import CLS_INDEX, EXTRA_POSITION, PATCH, ReductionResult
from .uniform import uniform_select
from .vispruner import vispruner_select
from .visionzip import visionzip_counts, visionzip_groups, visionzip_partition, visionzip_tokens

__all__ = [
    "ANCHOR_RULES",
    "CLS_INDEX",
    "EXTRA_POSITION",
    "PATCH",
    "ReductionConfig",
    "ReductionResult",
    "anchor_merge",
    "config_field_names",
    "distance_bias",
    "divprune_select",
    "get_reducer",
    "group_sizes",
    "holov_allocate",
    "holov_chunk_scores",
    "holov_select",
    "known_methods",
    "known_reducers",
    "make_reduction_config",
    "needed_inputs",
    "random_select",
    "reduce_visual_tokens",
    "register_reducer",
    "representative_positions",
    "rope_decay",
    "tome_partition",
    "uniform_select",
    "vispruner_select",
    "visionzip_counts",
    "visionzip_groups",
    "visionzip_partition",
    "visionzip_tokens",
]
