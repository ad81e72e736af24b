"""ToMe-style bipartite merging as a pure merging baseline (see bipartite.py for the rule).

All N tokens are merged, by repeated bipartite soft matching on the projected features, until n
remain; every output token is the (size-weighted) mean of its members, and sizes sum to N.
ToMe has no pruning stage, so ``merge`` (Stage B) does not apply to it: with --restore it gets
the same groups, plus RESTORE's retained positions and attention calibration.
"""
from __future__ import annotations

from .base import Partition, Reducer, ReductionInputs
from .bipartite import tome_partition
from .registry import register_reducer


@register_reducer("tome")
class ToMe(Reducer):
    def partition(self, inp: ReductionInputs, n: int) -> Partition:
        return Partition(tome_partition(inp.feats, n)[0])
